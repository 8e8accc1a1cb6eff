"""`lmiflow endpoints delete NAME --target sagemaker` on moto (server mode): it finds where
the endpoint's deploys keep their lease and files from the endpoint's lmiflow:s3-uri tag,
takes that lease, and removes the S3 files only that endpoint used (serving.properties
folders, staged weights no other model reads, production's baseline), keeping the reports
and shared weights, and saying so."""

from __future__ import annotations

import pytest

from lmiflow.cli import main
from lmiflow.targets.aws_requests import validate
from lmiflow.targets.base import EndpointVariant
from lmiflow.targets.sagemaker_delete import (
    STORE_TAG,
    delete_objects_requests,
    delete_requests,
    store_tags,
)

BUCKET = "lmiflow-bucket"
STORE = f"s3://{BUCKET}/lmi/"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.33.0-lmi15.0.0-cu128"
ROLE = "arn:aws:iam::123456789012:role/lmiflow-exec"
SHARED = f"{STORE}weights/org--tiny/{'a' * 40}/"  # staged weights another endpoint reads too
OWN = f"{STORE}weights/org--tiny/{'b' * 40}/"  # staged weights only this endpoint's model read


@pytest.fixture
def aws(moto_url, monkeypatch, tmp_path):
    """The CLI's boto3 talks to the moto server; returns a target on it to build state with."""
    from lmiflow.targets.sagemaker import SageMakerTarget

    for k, v in {"AWS_ENDPOINT_URL": moto_url, "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_CONFIG_FILE": str(tmp_path / "none"),
                 "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    t = SageMakerTarget("us-east-1", role_arn=ROLE, s3_uri=STORE, poll_interval_s=0)
    t.s3.create_bucket(Bucket=BUCKET)
    return t


def _put(t, uri: str, body: bytes = b"x") -> None:
    key = uri.removeprefix(f"s3://{BUCKET}/")
    t.s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def _keys(t) -> set[str]:
    pages = t.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {o["Key"] for p in pages for o in p.get("Contents", [])}


def _deploy(t, endpoint: str, h: str, data: str, tags: dict[str, str]) -> str:
    """A model reading `data`, its config and the endpoint on it; returns the model's name."""
    names = t.resource_names(endpoint, h * 8)
    t.create_model(names["model"], data, IMAGE, {}, tags)
    t.create_endpoint_config(names["endpoint_config"], names["model"],
                             EndpointVariant(instance_type="ml.g4dn.xlarge"), tags)
    t.create_endpoint(endpoint, names["endpoint_config"], tags)
    return names["model"]


@pytest.fixture
def world(aws):
    """prod: production on staged weights only it reads, plus a candidate an interrupted run
    left (its own serving.properties folder), an orphaned folder of a model a promotion
    deleted, its baseline and two runs' reports. other: another endpoint on the shared
    weights, which prod's candidate read too."""
    t = aws
    tagged = {**store_tags(STORE)}
    for prefix in (SHARED, OWN):
        for name in ("config.json", "model.safetensors"):
            _put(t, prefix + name)
    _deploy(t, "prod", "a", OWN, tagged)
    candidate = t.resource_names("prod", "c" * 8)["model"]
    t.create_model(candidate, t.stage(candidate, {"serving.properties": "engine=Python\n"}),
                   IMAGE, {}, tagged)
    _put(t, f"{STORE}{t.resource_names('prod', 'd' * 8)['model']}/serving.properties")
    t.create_model(t.resource_names("prod", "e" * 8)["model"], SHARED, IMAGE, {}, tagged)
    _put(t, f"{STORE}prod/baseline.json", b"{}")
    for run in ("prod-c-11111111", "prod-c-22222222"):
        _put(t, f"{STORE}prod/reports/{run}/report.json", b"{}")
    _deploy(t, "other", "f", SHARED, tagged)
    _put(t, f"{STORE}other/baseline.json", b"{}")
    return t


def _delete(*extra: str) -> int:
    return main(["endpoints", "delete", "prod", "--target", "sagemaker", "--region",
                 "us-east-1", *extra])


def test_delete_removes_what_only_the_endpoint_staged_and_keeps_shared_weights(world, capsys):
    t = world
    assert _delete() == 0  # no --s3-uri: the endpoint's tag says where
    out = capsys.readouterr().out
    left = _keys(t)
    assert left == {f"lmi/weights/org--tiny/{'a' * 40}/config.json",
                    f"lmi/weights/org--tiny/{'a' * 40}/model.safetensors",
                    "lmi/prod/reports/prod-c-11111111/report.json",
                    "lmi/prod/reports/prod-c-22222222/report.json",
                    "lmi/other/baseline.json"}, left
    assert f"deleted staged weights {OWN.removeprefix('s3://' + BUCKET + '/')}" not in out
    assert f"deleted staged weights s3://{BUCKET}/lmi/weights/org--tiny/{'b' * 40}/ " \
           "(2 object(s))" in out
    assert f"deleted baseline s3://{BUCKET}/lmi/prod/baseline.json (1 object(s))" in out
    assert f"kept staged weights {SHARED}: still read by model other-m-ffffffff" in out
    assert f"kept s3://{BUCKET}/lmi/prod/reports/ (2 run(s)' reports)" in out
    for h in "cd":
        assert f"deleted serving.properties folder s3://{BUCKET}/lmi/prod-m-{h * 8}/" in out
    assert [m["ModelName"] for m in t.sm.list_models()["Models"]] == ["other-m-ffffffff"]
    assert t.describe("other") is not None and t.describe("prod") is None


def test_delete_keeps_unused_weights_while_another_deploy_holds_a_lease(world, capsys):
    t = world
    t.sm.delete_endpoint(EndpointName="other")
    t.sm.delete_model(ModelName="other-m-ffffffff")
    with t.endpoint_lock("third", "a deploy of another endpoint"):
        assert _delete() == 0
    out = capsys.readouterr().out
    assert f"kept staged weights {SHARED}: a deploy of third may be about to use them" in out
    assert f"lmi/weights/org--tiny/{'a' * 40}/config.json" in _keys(t)


def test_delete_takes_the_lease_the_tag_points_at(world, capsys):
    t = world
    with t.endpoint_lock("prod", "a deploy in progress"):
        assert _delete() == 2  # no --s3-uri: found through the tag, and held
    err = capsys.readouterr().err
    assert "endpoint prod is busy, held by run a deploy in progress" in err
    assert t.describe("prod") is not None
    assert "lmi/prod/baseline.json" in _keys(t)


def test_delete_refuses_an_s3_uri_the_tag_contradicts(world, capsys):
    t = world
    assert _delete("--s3-uri", f"s3://{BUCKET}/elsewhere/") == 2
    err = capsys.readouterr().err
    assert f"s3://{BUCKET}/elsewhere/" in err and f"{STORE} (its {STORE_TAG} tag)" in err
    assert t.describe("prod") is not None and "lmi/prod/baseline.json" in _keys(t)
    assert _delete("--s3-uri", f"s3://{BUCKET}/lmi") == 0  # the same prefix, written so


def test_delete_of_an_untagged_endpoint_warns_and_leaves_s3(aws, capsys):
    t = aws
    staged = t.stage("old-m-aaaaaaaa", {"serving.properties": "engine=Python\n"})
    t.create_model("old-m-aaaaaaaa", staged, IMAGE, {}, {})
    t.create_endpoint_config("old-ec-aaaaaaaa", "old-m-aaaaaaaa",
                             EndpointVariant(instance_type="ml.g4dn.xlarge"), {})
    t.create_endpoint("old", "old-ec-aaaaaaaa", {})  # deployed before the tag
    assert main(["endpoints", "delete", "old", "--target", "sagemaker", "--region",
                 "us-east-1"]) == 0
    captured = capsys.readouterr()
    assert "endpoint old records no lmiflow:s3-uri tag" in captured.err
    assert "pass --s3-uri" in captured.err
    assert "kept S3 files of old: where they are is unknown" in captured.out
    assert _keys(t) == {"lmi/old-m-aaaaaaaa/serving.properties"}
    assert t.describe("old") is None


def test_deploys_tag_where_the_lease_lives(aws):
    from lmiflow import pipeline
    from lmiflow.pipeline import Names

    names = Names(production="p", endpoint="p-c-00000000", endpoint_config="p-ec-00000000",
                  model="p-m-00000000", spec_hash="0" * 16)
    assert pipeline.tags_for(names, "r1", aws)[STORE_TAG] == STORE
    assert STORE_TAG not in pipeline.tags_for(names, "r1")
    assert store_tags("s3://b/with'quote/") == {}  # not a SageMaker tag value: no tag
    assert store_tags("s3://b/" + "k" * 260) == {}


def test_objects_go_in_batches_of_a_thousand_and_every_request_is_valid():
    reqs = delete_objects_requests(BUCKET, [f"k/{i}" for i in range(2500)])
    assert [len(r.params["Delete"]["Objects"]) for r in reqs] == [1000, 1000, 500]
    for r in reqs:
        validate(r)
    listing = delete_requests("prod", STORE,
                              "arn:aws:sagemaker:us-east-1:123456789012:endpoint/")
    for r in listing:
        if r.params.get("ModelName") != "*":  # stands for each remaining model
            validate(r)


def test_delete_of_no_endpoint_is_one_line_and_no_warning(aws, capsys):
    assert main(["endpoints", "delete", "gone", "--target", "sagemaker", "--region",
                 "us-east-1"]) == 2
    err = capsys.readouterr().err
    assert "no endpoint named 'gone'" in err and "tag" not in err
