"""Fixtures for the weights and staging tests: a Hub stand-in (HF_ENDPOINT) and S3 through a
moto server, with no real credentials, no Hub cache and no token from the environment."""

from __future__ import annotations

import pytest

from tests.aws_fakes import moto_server, s3_client


@pytest.fixture
def hf_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for k in ("HF_TOKEN", "HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, when first imported: an earlier test that
    # imported it offline must not make these tests offline too.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def moto_s3(monkeypatch, tmp_path):
    """(endpoint URL, S3 client) of a moto server holding an empty bucket `lmiflow-bucket`."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    with moto_server() as url:
        s3 = s3_client(url)
        s3.create_bucket(Bucket="lmiflow-bucket")
        yield url, s3
