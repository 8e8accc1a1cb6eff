"""redact() and redact_text(): secrets go, data that merely mentions tokens stays."""

from __future__ import annotations

import copy

import pytest

from lmiflow.redact import MASK, redact, redact_text

HF = "hf_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3"
AKID = "AKIA" + "IOSFODNN7EXAMPLE"
ASID = "ASIA" + "Y34FZKBOKMUTVV7A"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # 40 chars, AWS docs' example shape


@pytest.mark.parametrize(
    "key",
    [
        "hf_token",
        "HF_TOKEN",
        "token",
        "aws_secret_access_key",
        "AWS_SECRET_ACCESS_KEY",
        "SecretAccessKey",
        "aws_access_key_id",
        "AccessKeyId",
        "aws_session_token",
        "SessionToken",
        "session_key",
        "password",
        "db-password",
        "credentials",
        "Credential",
        "api_key",
        "apiKey",
        "client_secret",
    ],
)
def test_secret_keys_are_masked(key: str) -> None:
    out = redact({"outer": {key: "s3cr3t-value", "name": "kept"}})
    assert out == {"outer": {key: MASK, "name": "kept"}}


@pytest.mark.parametrize(
    "key",
    ["output_tokens_per_s", "max_new_tokens", "tokenizer", "usd_per_1m_output_tokens", "passed"],
)
def test_keys_that_mention_tokens_are_kept(key: str) -> None:
    assert redact({key: "a value"}) == {key: "a value"}


def test_numbers_under_secret_looking_keys_stay() -> None:
    # kv_cache_bytes_per_token names a count, not a secret; a number cannot be a token anyway.
    data = {"kv_cache_bytes_per_token": 131072, "token": None, "password_set": True}
    assert redact(data) == data


def test_everything_textual_under_a_secret_key_goes() -> None:
    out = redact(
        {
            "credentials": {"AccessKeyId": "x", "Expiration": "2026", "ttl": 3600},
            "tokens": ["fine"],
            "hf_token": ["a", "b"],
        }
    )
    assert out == {
        "credentials": {"AccessKeyId": MASK, "Expiration": MASK, "ttl": 3600},
        "tokens": ["fine"],
        "hf_token": [MASK, MASK],
    }


def test_secret_shaped_strings_are_masked_anywhere() -> None:
    data = {
        "error": f"403 for {HF} while fetching",
        "steps": [{"summary": f"used key {AKID} and {ASID}"}],
        "log": (f"aws_secret_access_key = {SECRET}", f'"aws_secret_access_key": "{SECRET}"'),
    }
    out = redact(data)
    text = repr(out)
    for secret in (HF, AKID, ASID, SECRET):
        assert secret not in text
    assert out["error"] == f"403 for {MASK} while fetching"
    assert out["log"][0] == f"aws_secret_access_key = {MASK}"
    assert out["log"][1] == f'"aws_secret_access_key": "{MASK}"'


def test_redact_does_not_mutate_its_input() -> None:
    data = {"hf_token": HF, "nested": [{"error": AKID}]}
    before = copy.deepcopy(data)
    redact(data)
    assert data == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"HF_TOKEN={HF} python run.py", f"HF_TOKEN={MASK} python run.py"),
        ("option.hf_token=abc123\noption.dtype=bf16", f"option.hf_token={MASK}\noption.dtype=bf16"),
        ("export AWS_SESSION_TOKEN=FwoGZXIvYXdzEJr//////////", f"export AWS_SESSION_TOKEN={MASK}"),
        ("password: hunter2, user: bob", f"password: {MASK}, user: bob"),
        ("Authorization: Bearer eyJhbGciOi.J9.x-y_z", f"Authorization: {MASK}"),
        (f"id {AKID}.", f"id {MASK}."),
    ],
)
def test_redact_text_masks(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "max_new_tokens=128 output_tokens_per_s=44.1",
        "option.max_rolling_batch_prefill_tokens=4096",
        "revision 0e9e39f249a16976918f6564b8830bc894c89659",  # a 40-hex commit is not a secret
        "hf_short is not a token; AKIA-not-a-key",
        "tokenizer: meta-llama/Llama-3.1-8B-Instruct",
        "",
    ],
)
def test_redact_text_keeps_ordinary_text(text: str) -> None:
    assert redact_text(text) == text


def test_keys_that_only_mention_a_secret_word_keep_their_values():
    data = {"token_count_mismatches": "stream tokens vs details.generated_tokens",
            "aws_credentials_block": "prod-aws", "hf_token": "abc", "session_token": "xyz"}
    out = redact(data)
    assert out["token_count_mismatches"] == data["token_count_mismatches"]
    assert out["aws_credentials_block"] == "prod-aws"
    assert out["hf_token"] == "***" and out["session_token"] == "***"


def test_a_registered_secret_is_masked_under_any_key_and_in_any_sentence() -> None:
    from lmiflow.redact import register_secret

    value = "zq-registered-" + "9f3b2c71"
    register_secret(value)
    data = {"option.my_creds": value, "nested": [f"failed with {value}!"], "note": value[:-1]}
    out = redact(data)
    assert out["option.my_creds"] == MASK and out["nested"] == [f"failed with {MASK}!"]
    assert out["note"] == value[:-1]  # only the whole value is the secret


def test_secret_types_are_masked_whatever_their_key() -> None:
    from pydantic import SecretStr

    assert redact({"plain_name": SecretStr("x")}) == {"plain_name": MASK}


def test_short_values_are_not_registered() -> None:
    from lmiflow.redact import register_secret

    register_secret("on")
    assert redact_text("option.async_mode=on") == "option.async_mode=on"


def test_log_records_are_masked_before_any_handler_sees_them() -> None:
    """The record itself is masked (the record factory), so every handler sees the mask:
    here one of the test's own on Prefect's logger, which need not propagate to the root
    (Prefect's logging config, once a flow ran in this process, stops it there)."""
    import logging

    from lmiflow.redact import install_log_redaction, register_secret

    value = "zq-logged-" + "4e1d9a"
    register_secret(value)
    install_log_redaction()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger, handler = logging.getLogger("prefect.anything"), Keep()
    level, disabled = logger.level, logger.disabled
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.disabled = False  # a logging config may disable loggers that existed before it
    try:
        logger.info("token is %s", value)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled
    assert seen == [f"token is {MASK}"]
