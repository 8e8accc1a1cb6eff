"""Fixtures for the weights and staging tests: S3 through the session's moto server, with no
real credentials. The Hub side (hf_env, point_hf_at, hub_standin) is in tests/conftest.py."""

from __future__ import annotations

import pytest

from tests.aws_fakes import s3_client


@pytest.fixture
def moto_s3(monkeypatch, tmp_path, moto_url):
    """(endpoint URL, S3 client) of the moto server, holding an empty bucket `lmiflow-bucket`."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    s3 = s3_client(moto_url)
    s3.create_bucket(Bucket="lmiflow-bucket")
    yield moto_url, s3
