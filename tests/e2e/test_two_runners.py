"""Two runners, one production endpoint, two machines' worth of processes sharing only AWS
(a moto server for S3 and SageMaker): the first takes the S3 lease and builds its candidate;
the second, started while the first is mid-run, stops with "busy, held by run X since T"
without creating or deleting anything; the first then promotes. Exactly one promotion, and
nothing of the first run is touched by the second."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BUCKET = "lmiflow-bucket"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.38.0-lmi29.0.0-cu130"

RUNNER = textwrap.dedent(f"""
    import os, sys, time, boto3
    from lmiflow import lifecycle
    from lmiflow.pipeline import Names
    from lmiflow.spec import DeploymentSpec
    from lmiflow.targets.base import EndpointBusy, EndpointVariant
    from lmiflow.targets.sagemaker import SageMakerTarget

    run, h, gate = sys.argv[1:4]
    spec = DeploymentSpec.model_validate({{
        "name": "prod", "model": {{"id": "org/model"}},
        "workload": {{"max_input_tokens": 16, "max_output_tokens": 8, "concurrency": 1}},
        "target": {{"kind": "sagemaker", "region": "us-east-1",
                    "role_arn": "arn:aws:iam::123456789012:role/r",
                    "s3_uri": "s3://{BUCKET}/models/"}},
        "smoke_test": {{"prompt": "Hi", "max_new_tokens": 2}},
        "promotion": {{"endpoint_timeout_s": 30, "lease_ttl_s": 60}}}})
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="us-east-1")
    t = SageMakerTarget("us-east-1", role_arn="arn:aws:iam::123456789012:role/r",
                        s3_uri="s3://{BUCKET}/models/", session=session, poll_interval_s=0.05,
                        lease_ttl_s=60)
    names = Names(production="prod", endpoint=f"prod-c-{{h}}", endpoint_config=f"prod-ec-{{h}}",
                  model=f"prod-m-{{h}}", spec_hash=h)
    try:
        with t.endpoint_lock("prod", run) as lock:
            print("HELD", lifecycle.remove_leftovers(t, "prod"), flush=True)
            uri = t.stage(names.model, {{"serving.properties": "option.model_id=org/model\\n"}})
            t.create_model(names.model, uri, "{IMAGE}", {{}}, {{}})
            # moto's instance allow-list predates g5/p5: an older GPU type stands in
            t.create_endpoint_config(names.endpoint_config, names.model, EndpointVariant(
                instance_type="ml.g4dn.xlarge",
                inference_ami_version="al2023-ami-sagemaker-inference-gpu-4-1"), {{}})
            t.create_endpoint(names.endpoint, names.endpoint_config, {{}})
            lifecycle.wait_in_service(t, names.endpoint, 30)
            print("CANDIDATE", flush=True)
            while not os.path.exists(gate):  # the test lets the other runner try now
                time.sleep(0.05)
            lock.assert_held()
            print("PROMOTED", lifecycle.promote(t, spec, names, {{}}).action, flush=True)
    except EndpointBusy as exc:
        print("BUSY", exc, flush=True)
""")


def _start(url: str, run: str, h: str, gate: Path) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    return subprocess.Popen([sys.executable, "-c", RUNNER, run, h, str(gate)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, word: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(word):
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no {word}: {proc.stderr.read()}")


def test_second_runner_is_busy_and_touches_nothing_of_the_first(tmp_path):
    from tests.aws_fakes import moto_server

    with moto_server() as url:  # the session's moto server, reset before and after
        _two_runners(url, tmp_path)


def _two_runners(url: str, tmp_path: Path) -> None:
    first = second = None
    try:
        kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                  aws_secret_access_key="testing")
        boto3.client("s3", **kw).create_bucket(Bucket=BUCKET)
        answer = json.dumps({"generated_text": " Hello", "details": {"generated_tokens": 2}})
        urllib.request.urlopen(urllib.request.Request(
            f"{url}/moto-api/static/sagemaker/endpoint-results", method="POST",
            data=json.dumps({"results": [{"Body": answer, "ContentType": "application/json"}]})
            .encode(), headers={"Content-Type": "application/json"}), timeout=10)
        sm = boto3.client("sagemaker", **kw)

        def ours(h: str) -> list[str]:
            return sorted([m["ModelName"] for m in sm.list_models()["Models"]
                           if h in m["ModelName"]]
                          + [c["EndpointConfigName"] for c in
                             sm.list_endpoint_configs()["EndpointConfigs"] if h in
                             c["EndpointConfigName"]]
                          + [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]
                             if h in e["EndpointName"]])

        gate = tmp_path / "go"
        first = _start(url, "run-a", "aaaaaaaa", gate)
        _wait_for(first, "CANDIDATE")
        before = ours("aaaaaaaa")
        assert before == ["prod-c-aaaaaaaa", "prod-ec-aaaaaaaa", "prod-m-aaaaaaaa"]

        second = _start(url, "run-b", "bbbbbbbb", gate)
        busy = _wait_for(second, "BUSY")
        assert "busy, held by run run-a since" in busy
        assert second.wait(timeout=60) == 0
        assert ours("aaaaaaaa") == before  # the second deleted nothing of the first
        assert ours("bbbbbbbb") == []  # and created nothing

        gate.touch()
        assert _wait_for(first, "PROMOTED").split()[1] == "created"
        assert first.wait(timeout=60) == 0
        prod = sm.describe_endpoint(EndpointName="prod")
        assert prod["EndpointConfigName"] == "prod-ec-aaaaaaaa"  # exactly one promotion
        leases = boto3.client("s3", **kw).list_objects_v2(Bucket=BUCKET, Prefix="models/leases/")
        assert leases.get("KeyCount") == 0  # released
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
