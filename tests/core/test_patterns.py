"""Full matches everywhere: a trailing newline (which `$` lets through) is rejected by every
check that guards a name, key, ARN, URI or image, in the config and in the layers below it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lmiflow import patterns
from lmiflow.serving.properties import check_key
from lmiflow.serving.properties_text import parse_entries, render_entries
from lmiflow.spec import DeploymentSpec
from lmiflow.targets.aws_requests import split_s3
from lmiflow.targets.base import Target
from lmiflow.targets.local import LocalTarget

BASE = {
    "name": "ok",
    "model": {"id": "org/model"},
    "workload": {"max_input_tokens": 8, "max_output_tokens": 8, "concurrency": 1},
}
SM = {"kind": "sagemaker", "region": "us-east-1",
      "role_arn": "arn:aws:iam::123456789012:role/SageMakerExecution",
      "s3_uri": "s3://my-bucket/models/"}
IMAGE = ("763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:"
         "0.33.0-lmi15.0.0-cu128")


def spec(**sections) -> DeploymentSpec:
    return DeploymentSpec.model_validate({**BASE, **sections})


@pytest.mark.parametrize(("sections", "field"), [
    ({"name": "abc\n"}, "name"),
    ({"target": {**SM, "role_arn": SM["role_arn"] + "\n"}}, "role_arn"),
    ({"target": {**SM, "s3_uri": "s3://my-bucket/p\n"}}, "s3_uri"),
    ({"target": {**SM, "s3_uri": "s3://my-bucket\n"}}, "s3_uri"),
    ({"target": {**SM, "region": "us-east-1\n"}}, "region"),
    ({"serving": {"image_uri": IMAGE + "\n"}}, "image_uri"),
    ({"serving": {"image_uri": "not an image"}}, "image_uri"),
    ({"serving": {"image_uri": "registry.example.com/x:" + "t" * 300}}, "image_uri"),
])
def test_config_rejects_trailing_newlines_and_bad_shapes(sections, field):
    with pytest.raises(ValidationError) as exc:
        spec(**sections)
    assert field in str(exc.value.errors()[0]["loc"])


def test_the_good_forms_still_pass():
    s = spec(target=SM, serving={"image_uri": IMAGE})
    assert s.target.s3_uri == "s3://my-bucket/models/" and s.serving.image_uri == IMAGE
    assert spec(serving={"image_uri": "localhost:5000/lmi@sha256:" + "a" * 64}).serving.image_uri


def test_option_key_with_a_newline_cannot_inject_a_line():
    # (through a whole config: tests/cli/test_bad_input.py, "option key with a trailing newline")
    with pytest.raises(ValueError):
        check_key("option.x\n")
    with pytest.raises(ValueError):
        render_entries({"engine\n": "Python"})


def test_parsed_text_is_checked_by_the_same_rule():
    # a key that parse_entries would accept only if `$` matched before the newline
    assert parse_entries("option.a=1\n") == {"option.a": "1"}


def test_lower_layers_use_full_matches(tmp_path):
    with pytest.raises(ValueError):
        split_s3("s3://my-bucket/p\n")
    with pytest.raises(ValueError):
        Target.resource_names("prod\n", "deadbeef")
    t = LocalTarget(tmp_path)
    with pytest.raises(ValueError):
        t.stage("model\n", {"serving.properties": "engine=Python\n"})
    with pytest.raises(ValueError):
        t.stage("model", {"serving.properties": "engine=Python\n", "x.txt\n": "1"})


@pytest.mark.parametrize("value", ["abc\n", "abc\r", "a\x00b", 5, None])
def test_matches_needs_the_whole_string(value):
    assert not patterns.matches(patterns.NAME, value)
    assert patterns.matches(patterns.NAME, "abc")


def test_image_versions_and_tags_are_matched_in_full():
    from lmiflow.serving.images import parse_tag, version_key

    assert version_key("0.33.0") == (0, 33, 0)
    with pytest.raises(ValueError):
        version_key("0.33.0\n")
    with pytest.raises(ValueError):
        parse_tag("0.33.0-lmi15.0.0-cu128\n")
