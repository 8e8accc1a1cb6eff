"""The endpoint lease in S3: conditional PUTs (Stubber checks each request against the S3
service model), the whole life cycle on moto (which honours If-None-Match / If-Match), and two
processes racing for one lease through a moto server."""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import subprocess
import sys
import textwrap

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from lmiflow.targets import aws_requests
from lmiflow.targets.s3_lease import LeaseHeld, LeaseLost, S3Lease
from lmiflow.targets.sagemaker import SageMakerTarget
from lmiflow.targets.sagemaker_requests import lease_key
from tests.aws_fakes import no_aws

BUCKET, KEY = "lmiflow-bucket", "models/leases/prod.json"
T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(autouse=True)
def _no_aws(monkeypatch, tmp_path):
    no_aws(monkeypatch, tmp_path)


def _s3():
    return boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                         region_name="us-east-1").client("s3")


def _send(client):
    """Each lease request validated against the S3 service model, then sent by `client`."""
    return functools.partial(aws_requests.send, client)


class Clock:
    def __init__(self):
        self.t = T0

    def __call__(self) -> dt.datetime:
        return self.t


# ---- request shapes (Stubber) ----------------------------------------------------------------

def _holder(run_id: str, renewed: dt.datetime) -> bytes:
    return json.dumps({"run_id": run_id, "acquired_at": "2026-01-01T11:00:00+00:00",
                       "renewed_at": renewed.isoformat(), "host": "other:1",
                       "ttl_s": 600}).encode()


def _get(body: bytes, modified: dt.datetime, etag: str) -> dict:
    return {"Body": StreamingBody(io.BytesIO(body), len(body)), "LastModified": modified,
            "ETag": etag}


def test_take_renew_release_requests():
    s3 = _s3()
    lease = S3Lease(_send(s3), BUCKET, KEY, "prod", 600, run_id="run-a", now=Clock())
    anything = {"Bucket": BUCKET, "Key": KEY, "Body": ANY,
                "ContentType": "application/json"}
    with Stubber(s3) as stub:
        stub.add_response("put_object", {"ETag": '"e1"'}, {**anything, "IfNoneMatch": "*"})
        stub.add_response("put_object", {"ETag": '"e2"'}, {**anything, "IfMatch": '"e1"'})
        stub.add_response("delete_object", {}, {"Bucket": BUCKET, "Key": KEY, "IfMatch": '"e2"'})
        lease.acquire()
        assert lease.renew() is True and lease.etag == '"e2"'
        lease.release()
        stub.assert_no_pending_responses()


def test_busy_lease_stops_the_second_run_with_holder_and_time():
    s3 = _s3()
    lease = S3Lease(_send(s3), BUCKET, KEY, "prod", 600, run_id="run-b", now=Clock())
    with Stubber(s3) as stub:
        stub.add_client_error("put_object", "PreconditionFailed", http_status_code=412)
        stub.add_response("get_object", _get(_holder("run-a", T0), T0 - dt.timedelta(seconds=60),
                                             '"e1"'), {"Bucket": BUCKET, "Key": KEY})
        with pytest.raises(LeaseHeld) as err:
            lease.acquire()
        stub.assert_no_pending_responses()  # no takeover, no delete: nothing of run-a touched
    msg = str(err.value)
    assert "busy, held by run run-a since 2026-01-01T11:00:00+00:00" in msg


def test_expired_lease_is_taken_over_only_if_unchanged():
    s3 = _s3()
    lease = S3Lease(_send(s3), BUCKET, KEY, "prod", 600, run_id="run-b", now=Clock())
    stale = T0 - dt.timedelta(seconds=601)
    with Stubber(s3) as stub:
        stub.add_client_error("put_object", "PreconditionFailed", http_status_code=412)
        stub.add_response("get_object", _get(_holder("run-a", stale), stale, '"old"'),
                          {"Bucket": BUCKET, "Key": KEY})
        stub.add_response("put_object", {"ETag": '"new"'},
                          {"Bucket": BUCKET, "Key": KEY, "Body": ANY,
                           "ContentType": "application/json", "IfMatch": '"old"'})
        lease.acquire()
        stub.assert_no_pending_responses()
    assert lease.etag == '"new"'


# ---- life cycle on moto ------------------------------------------------------------------------

@pytest.fixture
def moto_s3(monkeypatch):
    from moto import mock_aws

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    with mock_aws():
        s3 = _s3()
        s3.create_bucket(Bucket=BUCKET)
        yield s3


def test_moto_lifecycle_busy_then_free(moto_s3):
    first = S3Lease(_send(moto_s3), BUCKET, KEY, "prod", 600, run_id="run-a")
    with first:
        body = json.loads(moto_s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read())
        assert body["run_id"] == "run-a" and body["ttl_s"] == 600
        with pytest.raises(LeaseHeld, match="held by run run-a"):
            S3Lease(_send(moto_s3), BUCKET, KEY, "prod", 600, run_id="run-b").acquire()
        assert json.loads(moto_s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read())[
            "run_id"] == "run-a"  # the loser changed nothing
    assert moto_s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0  # released
    with S3Lease(_send(moto_s3), BUCKET, KEY, "prod", 600, run_id="run-b"):
        pass


def test_moto_takeover_after_expiry_and_the_old_holder_notices(moto_s3):
    later = Clock()
    old = S3Lease(_send(moto_s3), BUCKET, KEY, "prod", 600, run_id="run-a")
    old.acquire()  # killed: never renews, never releases
    later.t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=700)
    new = S3Lease(_send(moto_s3), BUCKET, KEY, "prod", 600, run_id="run-b", now=later)
    new.acquire()
    assert old.renew() is False  # the ETag moved on: run-a lost the lease
    with pytest.raises(LeaseLost, match="stopping before promotion"):
        old.assert_held()
    old.release()  # must not delete run-b's lease
    body = json.loads(moto_s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read())
    assert body["run_id"] == "run-b"
    new.assert_held()
    new.release()


def test_renewal_thread_keeps_the_lease_fresh(moto_s3):
    lease = S3Lease(_send(moto_s3), BUCKET, KEY, "prod", 600, run_id="run-a", renew_every_s=0.05)
    with lease:
        first = lease.etag
        import time

        deadline = time.monotonic() + 10
        while lease.etag == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease.etag != first  # renewed in the background (a new object version)
        lease.assert_held()


def test_target_lock_lives_in_the_s3_prefix(moto_s3):
    t = SageMakerTarget("us-east-1", s3_uri=f"s3://{BUCKET}/models/",
                        session=boto3.Session(aws_access_key_id="testing",
                                              aws_secret_access_key="testing",
                                              region_name="us-east-1"))
    with t.endpoint_lock("prod", run_id="run-a") as lease:
        assert lease.key == lease_key("models/", "prod") == KEY
        assert moto_s3.head_object(Bucket=BUCKET, Key=KEY)["ContentLength"] > 0
    with SageMakerTarget("us-east-1").endpoint_lock("prod"):
        pass  # no S3 prefix: nothing shared to lock in (a warning says so)


def test_endpoint_names_that_differ_only_in_case_contend_for_one_lease(moto_s3):
    """SageMaker endpoint names are case-insensitive (A and a are one endpoint): their runs
    must hold one lease, though S3 keys are case-sensitive."""
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="us-east-1")
    t = SageMakerTarget("us-east-1", s3_uri=f"s3://{BUCKET}/models/", session=session)
    with t.endpoint_lock("Prod", run_id="run-a"), pytest.raises(LeaseHeld):
        t.endpoint_lock("prod", run_id="run-b").acquire()


def test_endpoints_delete_refuses_while_a_deploy_holds_the_lease(moto_s3):
    """`lmiflow endpoints delete` takes the lease a deploy holds (any case of the name): while
    another run holds it, nothing is deleted and the one line says why."""
    import argparse

    from lmiflow.commands.endpoints import _delete
    from lmiflow.errors import UserInputError

    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="us-east-1")
    t = SageMakerTarget("us-east-1", s3_uri=f"s3://{BUCKET}/models/", session=session)
    args = argparse.Namespace(name="prod")
    with t.endpoint_lock("Prod", run_id="deploy-run"), pytest.raises(UserInputError) as err:
        _delete(t, args)
    assert err.value.field == "NAME" and "deploy-run" in err.value.reason
    assert "wait for that run to end" in err.value.reason


# ---- two processes, one moto server -------------------------------------------------------------

RACER = textwrap.dedent("""
    import functools, sys, time, boto3
    from lmiflow.targets.aws_requests import send
    from lmiflow.targets.s3_lease import LeaseHeld, S3Lease
    s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    start = float(sys.argv[3])
    while time.time() < start:
        time.sleep(0.001)
    try:
        with S3Lease(functools.partial(send, s3), "lmiflow-bucket",
                     "models/leases/prod.json", "prod", 600, run_id=sys.argv[2]):
            print("HELD", flush=True)
            time.sleep(1.5)
    except LeaseHeld as exc:
        print("BUSY", exc, flush=True)
""")


@pytest.mark.slow
def test_two_processes_exactly_one_holds_the_lease():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                     aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        import time

        start = str(time.time() + 2.0)  # both processes fire at the same instant
        procs = [subprocess.Popen([sys.executable, "-c", RACER, url, f"run-{i}", start],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        server.stop()
    results = [o[0].split()[0] if o[0] else o[1] for o in outs]
    assert sorted(results) == ["BUSY", "HELD"], outs
    busy = next(o[0] for o in outs if o[0].startswith("BUSY"))
    assert "busy, held by run run-" in busy
