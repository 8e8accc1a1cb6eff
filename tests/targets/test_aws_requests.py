"""Requests as data: validation against botocore's service model (what botocore checks and what
it leaves to AWS), masking of secrets, the guard on live clients, and the compact view."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from lmiflow.targets.aws_requests import (
    AwsRequest,
    InvalidRequest,
    compact,
    compact_line,
    guard,
    masked,
    method_name,
    validate,
)
from lmiflow.targets.base import EndpointVariant
from lmiflow.targets.sagemaker_requests import (
    create_endpoint_config_request,
    create_model_request,
    put_object_request,
)

ROLE = "arn:aws:iam::123456789012:role/lmiflow-test"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.33.0-lmi15.0.0-cu128"
TOKEN = "hf_" + "a1B2c3D4" * 5


def req(operation, service="sagemaker", **params):
    return AwsRequest(service=service, operation=operation, params=params)


def test_a_valid_request_passes():
    validate(req("DescribeEndpoint", EndpointName="prod"))
    validate(req("GetObject", service="s3", Bucket="b", Key="k"))


@pytest.mark.parametrize("bad, says", [
    (req("DescribeEndpoint"), "EndpointName"),                          # missing member
    (req("DescribeEndpoint", EndpointName="p", Extra=1), "Extra"),     # unknown member
    (req("DescribeEndpoint", EndpointName=7), "Invalid type"),          # wrong type
    (req("DescribeEndpoint", EndpointName="bad_name"), "pattern"),       # AWS-side pattern
    (req("DescribeEndpoint", EndpointName="a" * 64), "at most 63"),      # AWS-side max length
    (req("NoSuchCall"), "not an operation"),
    (req("ListThings", service="nosuch"), "not an AWS service"),
])
def test_invalid_requests_name_the_member(bad, says):
    with pytest.raises(InvalidRequest, match=says):
        validate(bad)


def test_limits_botocore_leaves_to_aws_are_checked():
    variant = EndpointVariant(instance_type="ml.g4dn.xlarge", instance_count=1)
    good = create_endpoint_config_request("ec", "m", variant, {})
    pv = good.params["ProductionVariants"][0]
    # the service model's enum, and a maximum botocore's ParamValidator does not check
    with pytest.raises(InvalidRequest, match=r"InstanceType: 'ml\.nope' is not one of"):
        validate(good.model_copy(update={"params": {
            **good.params, "ProductionVariants": [{**pv, "InstanceType": "ml.nope"}]}}))
    with pytest.raises(InvalidRequest, match="ContainerStartupHealthCheckTimeoutInSeconds: "
                                             "4000 is above the API's maximum 3600"):
        validate(good.model_copy(update={"params": {
            **good.params, "ProductionVariants": [
                {**pv, "ContainerStartupHealthCheckTimeoutInSeconds": 4000}]}}))
    with pytest.raises(InvalidRequest, match="Tags: 51 items"):
        validate(good.model_copy(update={"params": {
            **good.params, "Tags": [{"Key": f"k{i}", "Value": "v"} for i in range(51)]}}))


def test_environment_value_over_1024_characters_is_rejected_without_echoing_a_secret():
    r = create_model_request("m", ROLE, IMAGE, {"HF_MODEL_ID": "org/m"}, "", {})
    env = {"HF_MODEL_ID": "org/m", "HF_TOKEN": TOKEN + "x" * 1024}
    long = r.model_copy(update={"params": {**r.params, "PrimaryContainer": {
        **r.params["PrimaryContainer"], "Environment": env}}})
    with pytest.raises(InvalidRequest) as err:
        validate(long)
    assert "PrimaryContainer.Environment.HF_TOKEN" in str(err.value)
    assert TOKEN not in str(err.value)


def test_wrong_type_error_does_not_echo_a_secret():
    r = req("CreateModel", ModelName="m", ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": IMAGE, "Environment": {"HF_TOKEN": TOKEN, "N": 5}})
    with pytest.raises(InvalidRequest) as err:
        validate(r)
    assert TOKEN not in str(err.value)


def test_masked_hides_secret_environment_and_shows_bodies_by_size():
    r = create_model_request("m", ROLE, IMAGE, {"HF_MODEL_ID": "org/m", "HF_TOKEN": TOKEN},
                             "", {"team": "a"})
    shown = masked(r)
    assert shown["PrimaryContainer"]["Environment"] == {"HF_MODEL_ID": "org/m",
                                                        "HF_TOKEN": "***"}
    assert r.params["PrimaryContainer"]["Environment"]["HF_TOKEN"] == TOKEN  # not mutated
    assert TOKEN not in str(r.shown())
    put = put_object_request("s3://bkt/p/m/serving.properties", b"option.x=1\n", "text/plain")
    assert masked(put)["Body"] == "option.x=1\n"
    binary = put_object_request("s3://bkt/p/m/w.bin", b"\xff\xfe" * 5, "application/x")
    assert masked(binary)["Body"] == "<10 bytes>"
    # the report's form is itself valid for the service model
    validate(AwsRequest(service="sagemaker", operation="CreateModel", params=shown))


def test_sensitive_members_of_the_service_model_are_masked():
    # s3 PutObject's SSECustomerKey is marked sensitive in botocore's model
    r = req("PutObject", service="s3", Bucket="b", Key="k", SSECustomerKey="very-secret")
    assert masked(r)["SSECustomerKey"] == "***"


def test_method_names_are_boto3s():
    assert method_name("CreateEndpointConfig") == "create_endpoint_config"
    assert method_name("ListObjectsV2") == "list_objects_v2"


def test_guard_checks_requests_boto3_builds_and_reports_each(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    client = boto3.Session(aws_access_key_id="t", aws_secret_access_key="t",
                           region_name="us-east-1").client("sagemaker")
    seen: list[AwsRequest] = []
    guard(client, seen.append)
    with Stubber(client) as stub:
        stub.add_response("describe_endpoint_config", {
            "EndpointConfigName": "ec", "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:"
            "123456789012:endpoint-config/ec", "ProductionVariants": [
                {"VariantName": "AllTraffic", "ModelName": "m"}],
            "CreationTime": "2026-01-01T00:00:00Z"}, {"EndpointConfigName": "ec"})
        client.describe_endpoint_config(EndpointConfigName="ec")
        # a name AWS would reject: stopped before Stubber (or the network) sees it
        with pytest.raises(InvalidRequest, match="pattern"):
            client.describe_endpoint_config(EndpointConfigName="bad_name")
    assert [(r.service, r.operation, r.params) for r in seen] == [
        ("sagemaker", "DescribeEndpointConfig", {"EndpointConfigName": "ec"})]


def test_guard_names_the_runtime_service(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    client = boto3.Session(aws_access_key_id="t", aws_secret_access_key="t",
                           region_name="us-east-1").client("sagemaker-runtime")
    seen: list[AwsRequest] = []
    guard(client, seen.append)
    with Stubber(client) as stub:
        stub.add_response("invoke_endpoint", {"Body": b"{}"}, None)
        client.invoke_endpoint(EndpointName="e", Body=b"{}")
    assert [(r.service, r.operation) for r in seen] == [("sagemaker-runtime", "InvokeEndpoint")]


def test_compact_view_fits_80_columns_and_groups_by_step():
    reqs = [
        create_model_request("prod-m-12345678", ROLE, IMAGE, {"HF_MODEL_ID": "o/m"}, "", {})
        .model_copy(update={"step": "create_model"}),
        AwsRequest(service="sagemaker", operation="DescribeEndpoint",
                   params={"EndpointName": "prod-c-12345678" + "x" * 40},
                   step="create_endpoint", when="every 30 s until InService or Failed"),
    ]
    lines = compact(reqs)
    assert lines[0] == "create_model:"
    assert lines[1] == "  1. sagemaker CreateModel prod-m-12345678"
    assert lines[2] == "create_endpoint:"
    assert lines[3].startswith("  2. sagemaker DescribeEndpoint prod-c-12345678xxx")
    assert lines[3].endswith("…")  # cut at 80 columns
    assert "(every 30 s until InService or Failed)" in lines[4]
    assert all(len(line) <= 80 for line in lines)
    variant = EndpointVariant(instance_type="ml.g5.12xlarge", instance_count=2)
    line = compact_line(create_endpoint_config_request("ec", "m", variant, {}))
    assert line == "sagemaker CreateEndpointConfig ec ml.g5.12xlarge x2"
    put = put_object_request("s3://bkt/p/m/serving.properties", b"x", "text/plain")
    assert compact_line(put) == "s3 PutObject s3://bkt/p/m/serving.properties"
    tags = req("ListTags", ResourceArn="arn:aws:sagemaker:us-east-1:1:endpoint/prod")
    assert compact_line(tags) == "sagemaker ListTags endpoint/prod"
