"""The typed home of a secret in a config: references, resolution, and refusal elsewhere."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lmiflow.errors import UserInputError
from lmiflow.secrets import PYDANTIC_MASK, SecretRef, fill_properties
from lmiflow.spec import parse_spec

BASE = {"name": "ok", "model": {"id": "org/model"},
        "workload": {"max_input_tokens": 8, "max_output_tokens": 8, "concurrency": 1}}


def with_serving(serving: dict) -> dict:
    return {**BASE, "serving": serving}


def test_dumps_never_hold_a_literal():
    spec = parse_spec(with_serving({"secret_options": {"option.x_key": "lit-value-123"}}))
    dumped = spec.model_dump_json()
    assert "lit-value-123" not in dumped and PYDANTIC_MASK in dumped


@pytest.mark.parametrize("ref", [{}, {"env": "A", "secret_block": "b"}, {"env": "1A"},
                                 {"secret_block": "Bad Name"}, {"value": ""}])
def test_a_reference_names_exactly_one_valid_home(ref):
    with pytest.raises(ValidationError):
        SecretRef.model_validate(ref)


@pytest.mark.parametrize(("options", "field"), [
    ({"option.hf_token": "abc"}, "serving.options.option.hf_token"),
    ({"option.my_creds": "abc"}, "serving.options.option.my_creds"),
    ({"option.whatever": "hf_" + "a1B2" * 9}, "serving.options.option.whatever"),
])
def test_plain_secrets_are_refused_with_the_way_to_their_home(options, field):
    with pytest.raises(UserInputError) as exc:
        parse_spec(with_serving({"options": options}))
    assert exc.value.field == field and "secret_options" in exc.value.reason
    assert next(iter(options.values())) not in str(exc.value)


def test_resolution_and_filling(monkeypatch):
    monkeypatch.setenv("LMIFLOW_UNIT_SECRET", "from-env-value")
    refs = {"option.a_token": SecretRef(env="LMIFLOW_UNIT_SECRET"),
            "option.b_token": SecretRef.model_validate("literal-value")}
    text = "engine=Python\noption.a_token=***\noption.b_token=***\n"
    filled = fill_properties(text, refs, "serving.secret_options")
    assert filled == ("engine=Python\noption.a_token=from-env-value\n"
                      "option.b_token=literal-value\n")
    monkeypatch.delenv("LMIFLOW_UNIT_SECRET")
    with pytest.raises(UserInputError, match="LMIFLOW_UNIT_SECRET is not set") as exc:
        fill_properties(text, refs, "serving.secret_options")
    assert exc.value.field == "serving.secret_options.option.a_token"


def test_a_literal_that_arrived_masked_is_an_error_not_a_password_of_stars():
    ref = SecretRef.model_validate(PYDANTIC_MASK)
    with pytest.raises(UserInputError, match="secret_block"):
        ref.resolve("serving.secret_options.option.x")


def test_a_secret_cannot_inject_a_line(monkeypatch):
    monkeypatch.setenv("LMIFLOW_UNIT_SECRET", "abc\nengine=MPI")
    with pytest.raises(UserInputError, match="line break"):
        fill_properties("engine=Python\n", {"option.t": SecretRef(env="LMIFLOW_UNIT_SECRET")},
                        "serving.secret_options")


# ---- a credential of the runner in a plain field ------------------------------------------------

SAGEMAKER = {"kind": "sagemaker", "region": "us-east-1", "s3_uri": "s3://my-bucket/lmiflow/",
             "role_arn": "arn:aws:iam::123456789012:role/lmiflow"}


@pytest.mark.parametrize(("where", "field"), [
    ("revision", "model.revision"), ("option", "serving.options.option.rope_flag"),
    ("symlink", "model.id")])
def test_a_runner_credential_in_a_plain_field_is_printed_and_stored_nowhere(
        tmp_path, monkeypatch, capsys, where, field):
    """A Hub token as model.revision, an AWS secret key as a serving option, a model file
    that links to the credentials file: `deploy --dry-run`, `iam` and `deploy` refuse the
    config naming the field (exit 2), print none of it, and create nothing (no report, no
    request list, no state, no Prefect database, nothing staged)."""
    import secrets as random_secrets

    import yaml

    from lmiflow.cli import main

    token = f"rev{random_secrets.token_hex(16)}"  # no known shape: caught by value only
    aws_key = f"AwsKey{random_secrets.token_hex(17)}"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_key)
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    config = {**BASE, "target": SAGEMAKER, "model": {"id": "org/model"}}
    if where == "revision":
        config["model"]["revision"] = token
    elif where == "option":
        config["serving"] = {"options": {"option.rope_flag": aws_key}}
    else:
        import shutil
        from pathlib import Path

        creds = tmp_path / "home" / ".aws" / "credentials"
        creds.parent.mkdir(parents=True)
        creds.write_text(f"[default]\naws_secret_access_key = {aws_key}\n")
        model = tmp_path / "model"
        shutil.copytree(Path(__file__).parents[2] / "configs" / "models" / "llama-3.1-8b",
                        model)
        (model / "vocab.txt").symlink_to(creds)
        config["model"] = {"id": str(model)}
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")  # only the file holds it: not registered
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    for argv in (["deploy", str(cfg), "--dry-run", "--report-dir", str(tmp_path / "r")],
                 ["iam", str(cfg)], ["deploy", str(cfg), "--report-dir", str(tmp_path / "r")]):
        assert main(argv) == 2
        out = capsys.readouterr()
        why = ("is a symbolic link out of the model directory" if where == "symlink"
               else "holds a credential of this runner")
        assert f"lmiflow: error: {field}: " in out.err and why in out.err, out.err
        assert token not in out.out + out.err and aws_key not in out.out + out.err
    made = {"c.yaml"} | ({"home", "model"} if where == "symlink" else set())
    assert {p.name for p in tmp_path.iterdir()} == made


def test_whatever_a_command_prints_is_masked_by_value(capsys):
    """The CLI's output stream masks every registered secret, of any shape, whichever module
    prints it."""
    import secrets as random_secrets
    import sys

    from lmiflow.redact import masked_output, register_secret

    short = f"pw{random_secrets.token_hex(3)}"  # too short to refuse a config, still masked
    register_secret(short)
    with masked_output():
        print(f"revision {short} of the model")
        print(f"{short}!", file=sys.stderr)
    out = capsys.readouterr()
    assert out.out == "revision *** of the model\n" and out.err == "***!\n"
