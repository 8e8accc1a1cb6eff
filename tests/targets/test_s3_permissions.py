"""A 403 from S3 on what lmiflow reads and writes in its prefix (production's baseline, the
calibration store, the run lease, the report) is a permission error naming the action and the
object's ARN, never "not there yet"; a 404 is "not there yet". Through botocore's Stubber on
the target's own S3 client, so each request is also checked against the service model.

The rule that makes the difference matter: without s3:ListBucket on the bucket, S3 answers a
read of a missing key with 403 AccessDenied, not 404 NoSuchKey (S3 API Reference, GetObject,
"Permissions": https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html)."""

from __future__ import annotations

import pytest
from botocore.stub import Stubber

from lmiflow.targets.iam import PermissionDenied
from lmiflow.targets.sagemaker import SageMakerTarget
from tests.aws_fakes import no_aws, session

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
BUCKET = "lmiflow-bucket"


@pytest.fixture
def s3(monkeypatch, tmp_path):
    no_aws(monkeypatch, tmp_path)
    t = SageMakerTarget("us-east-1", role_arn=ROLE, s3_uri=f"s3://{BUCKET}/lf/",
                        session=session())
    with Stubber(t.s3) as stub:
        yield t, stub
        stub.assert_no_pending_responses()


def denied(stub, method: str) -> None:
    stub.add_client_error(method, "AccessDenied", "Access Denied", http_status_code=403)


def missing(stub, method: str) -> None:
    stub.add_client_error(method, "NoSuchKey", "The specified key does not exist.",
                          http_status_code=404)


def test_a_missing_baseline_is_none_a_denied_one_a_permission_error(s3):
    t, stub = s3
    missing(stub, "get_object")
    assert t.load_baseline("prod") is None
    denied(stub, "get_object")
    with pytest.raises(PermissionDenied) as err:
        t.load_baseline("prod")
    msg = str(err.value)
    assert msg.startswith(f"s3:GetObject on arn:aws:s3:::{BUCKET}/lf/prod/baseline.json "
                          "denied (AccessDenied)")
    assert f"s3:ListBucket on arn:aws:s3:::{BUCKET}" in msg and "\n" not in msg


def test_a_denied_calibration_store_is_not_an_empty_one(s3):
    t, stub = s3
    missing(stub, "get_object")
    assert t.load_calibration() is None
    denied(stub, "get_object")
    with pytest.raises(PermissionDenied, match=f"s3:GetObject on arn:aws:s3:::{BUCKET}/lf/"
                                               "calibration.json denied"):
        t.update_calibration(lambda store: store or {})


def test_a_denied_lease_read_is_not_a_free_lease(s3):
    t, stub = s3
    stub.add_client_error("put_object", "PreconditionFailed", "At least one of the "
                          "pre-conditions you specified did not hold", http_status_code=412)
    denied(stub, "get_object")
    with pytest.raises(PermissionDenied, match=f"s3:GetObject on arn:aws:s3:::{BUCKET}/lf/"
                                               "leases/prod.json denied"):
        t.endpoint_lock("prod", "run-1").acquire()


def test_a_denied_report_upload_names_the_object(s3):
    t, stub = s3
    denied(stub, "put_object")
    with pytest.raises(PermissionDenied, match=f"s3:PutObject on arn:aws:s3:::{BUCKET}/lf/"
                                               "prod/reports/prod-c-0123abcd/report.json"):
        t.store_report("prod", "prod-c-0123abcd", {"report.json": b"{}"})


def test_a_denied_listing_of_an_s3_model_names_the_permission(s3):
    """An s3:// model is read with boto3's paginator (not sent request by request): its 403
    is the same one-line permission error."""
    t, stub = s3
    denied(stub, "list_objects_v2")
    with pytest.raises(PermissionDenied, match=f"^s3:ListBucket on arn:aws:s3:::{BUCKET} "
                                               "denied \\(AccessDenied\\)"):
        t.read_s3_model(f"s3://{BUCKET}/models/tiny/")
