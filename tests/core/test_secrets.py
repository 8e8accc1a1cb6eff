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
