"""Promotion and cleanup against the SageMaker target, without Prefect, every request checked
by botocore's Stubber against the real service model: the blue/green update_endpoint with its
DeploymentConfig, the production smoke test, and the deletes (candidate, and the config and
model production ran before); on failure the candidate's three resources are deleted."""

from __future__ import annotations

import io
import json

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from lmiflow import lifecycle
from lmiflow.errors import StepFailed
from lmiflow.pipeline import Names
from lmiflow.spec import DeploymentSpec
from lmiflow.targets.sagemaker import SageMakerTarget
from tests.aws_fakes import no_aws

ARN = "arn:aws:sagemaker:us-east-1:123456789012:"


@pytest.fixture()
def aws_env(monkeypatch, tmp_path):
    no_aws(monkeypatch, tmp_path)


@pytest.fixture()
def target(aws_env):
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="us-east-1")
    t = SageMakerTarget("us-east-1", role_arn="arn:aws:iam::123456789012:role/SageMakerExecution",
                        s3_uri="s3://bucket/models/", session=session, poll_interval_s=0.01,
                        sleep=lambda s: None)
    return t


SPEC = DeploymentSpec.model_validate({
    "name": "prod",
    "model": {"id": "meta-llama/Llama-3.1-8B", "dtype": "bf16"},
    "workload": {"max_input_tokens": 1024, "max_output_tokens": 128, "concurrency": 4},
    "instance": {"count": 4},  # a 25 % canary is one of four instances
    "target": {"kind": "sagemaker", "region": "us-east-1",
               "role_arn": "arn:aws:iam::123456789012:role/SageMakerExecution",
               "s3_uri": "s3://bucket/models/"},
    "smoke_test": {"prompt": "Hi", "max_new_tokens": 4},
    "promotion": {"strategy": "CANARY", "canary_size_pct": 25, "wait_interval_s": 600,
                  "alarms": ["prod-5xx"], "endpoint_timeout_s": 60},
})
NAMES = Names(production="prod", endpoint="prod-c-bbbbbbbb", endpoint_config="prod-ec-bbbbbbbb",
              model="prod-m-bbbbbbbb", spec_hash="bbbbbbbb")


def described(status, config):
    return {"EndpointName": "prod", "EndpointArn": ARN + "endpoint/prod",
            "EndpointConfigName": config, "EndpointStatus": status,
            "CreationTime": "2026-01-01T00:00:00Z", "LastModifiedTime": "2026-01-01T00:00:00Z"}


def config_of(name, model):
    return {"EndpointConfigName": name, "EndpointConfigArn": ARN + "endpoint-config/" + name,
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": model,
                                    "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 1}],
            "CreationTime": "2026-01-01T00:00:00Z"}


def listed(sm, models, configs, endpoints):
    t = "2026-01-01T00:00:00Z"
    sm.add_response("list_models", {"Models": [
        {"ModelName": m, "ModelArn": ARN + "model/" + m, "CreationTime": t} for m in models]},
        {"NameContains": "prod-"})
    sm.add_response("list_endpoint_configs", {"EndpointConfigs": [
        {"EndpointConfigName": c, "EndpointConfigArn": ARN + "endpoint-config/" + c,
         "CreationTime": t} for c in configs]}, {"NameContains": "prod-"})
    sm.add_response("list_endpoints", {"Endpoints": [
        {"EndpointName": e, "EndpointArn": ARN + "endpoint/" + e, "CreationTime": t,
         "LastModifiedTime": t, "EndpointStatus": "InService"} for e in endpoints
        if e.startswith("prod-")]}, {"NameContains": "prod-"})


def expect_update(sm, update_params=None):
    """promote's first calls: describe production (with tags), delete the candidate endpoint
    (its benchmark is done: blue and green are the only fleets during the update), the busy
    check, the update."""
    ep = {"EndpointName": "prod"}
    sm.add_response("describe_endpoint", described("InService", "prod-ec-aaaaaaaa"), ep)
    sm.add_response("list_tags", {"Tags": []}, {"ResourceArn": ARN + "endpoint/prod"})
    sm.add_response("delete_endpoint", {}, {"EndpointName": "prod-c-bbbbbbbb"})
    sm.add_response("describe_endpoint", described("InService", "prod-ec-aaaaaaaa"), ep)
    sm.add_response("update_endpoint", {"EndpointArn": ARN + "endpoint/prod"}, update_params)


def promote_only(target):
    return lifecycle.promote(target, SPEC, NAMES, {"project": "lmiflow"})


def test_promote_updates_blue_green_smoke_tests_and_removes_old(target):
    sm = Stubber(target.sm)
    expect_update(sm, {
        "EndpointName": "prod", "EndpointConfigName": "prod-ec-bbbbbbbb",
        "DeploymentConfig": {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {
                    "Type": "CANARY", "WaitIntervalInSeconds": 600,
                    "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 25}},
                "TerminationWaitInSeconds": 0},
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "prod-5xx"}]}}})
    ep = {"EndpointName": "prod"}
    sm.add_response("describe_endpoint", described("Updating", "prod-ec-aaaaaaaa"), ep)
    sm.add_response("describe_endpoint", described("InService", "prod-ec-bbbbbbbb"), ep)
    # cleanup: what production uses now, what exists, then the deletes.
    sm.add_response("describe_endpoint", described("InService", "prod-ec-bbbbbbbb"), ep)
    sm.add_response("list_tags", {"Tags": []}, {"ResourceArn": ARN + "endpoint/prod"})
    sm.add_response("describe_endpoint_config", config_of("prod-ec-bbbbbbbb", "prod-m-bbbbbbbb"),
                    {"EndpointConfigName": "prod-ec-bbbbbbbb"})
    listed(sm, models=["prod-m-aaaaaaaa", "prod-m-bbbbbbbb"],
           configs=["prod-ec-aaaaaaaa", "prod-ec-bbbbbbbb"],
           endpoints=["prod", "prod-2"])
    sm.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "prod-ec-aaaaaaaa"})
    sm.add_response("delete_model", {}, {"ModelName": "prod-m-aaaaaaaa"})
    rt = Stubber(target.runtime)
    body = json.dumps({"generated_text": " Hello", "details": {"generated_tokens": 2,
                                                              "finish_reason": "length"}}).encode()
    rt.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(body), len(body)),
                                        "ContentType": "application/json"},
                    {"EndpointName": "prod", "ContentType": "application/json",
                     "Accept": "application/json",
                     "Body": json.dumps({"inputs": "Hi", "parameters": {
                         "max_new_tokens": 4, "details": True}}).encode()})

    with sm, rt:
        result = promote_only(target)
        sm.assert_no_pending_responses()
        rt.assert_no_pending_responses()
    assert result.action == "updated (CANARY)"
    assert result.previous_config == "prod-ec-aaaaaaaa"
    # "prod-2" is another endpoint's name, never touched.
    assert result.removed == ["endpoint prod-c-bbbbbbbb", "endpoint_config prod-ec-aaaaaaaa",
                              "model prod-m-aaaaaaaa"]
    assert result.production_smoke_test.passed


def test_rolled_back_update_is_not_a_promotion(target):
    """Auto-rollback: production InService again but on the old config: the step fails."""
    sm = Stubber(target.sm)
    ep = {"EndpointName": "prod"}
    expect_update(sm)
    sm.add_response("describe_endpoint", described("RollingBack", "prod-ec-aaaaaaaa"), ep)
    sm.add_response("describe_endpoint", described("InService", "prod-ec-aaaaaaaa"), ep)

    with sm, pytest.raises(StepFailed, match="rolled back"):
        promote_only(target)


def test_cleanup_on_failure_deletes_the_candidate_only(target):
    sm = Stubber(target.sm)
    ep = {"EndpointName": "prod"}
    sm.add_response("describe_endpoint", described("InService", "prod-ec-aaaaaaaa"), ep)
    sm.add_response("list_tags", {"Tags": []}, {"ResourceArn": ARN + "endpoint/prod"})
    sm.add_response("describe_endpoint_config", {
        "EndpointConfigName": "prod-ec-aaaaaaaa", "EndpointConfigArn": ARN + "endpoint-config/x",
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "prod-m-aaaaaaaa",
                                "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 1}],
        "CreationTime": "2026-01-01T00:00:00Z"}, {"EndpointConfigName": "prod-ec-aaaaaaaa"})
    sm.add_response("delete_endpoint", {}, {"EndpointName": "prod-c-bbbbbbbb"})
    sm.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "prod-ec-bbbbbbbb"})
    sm.add_client_error("delete_model", service_error_code="ValidationException",
                        service_message='Could not find model "prod-m-bbbbbbbb".',
                        http_status_code=400, expected_params={"ModelName": "prod-m-bbbbbbbb"})
    with sm:
        removed = lifecycle.cleanup_candidate(target, NAMES)
        sm.assert_no_pending_responses()
    assert removed == ["endpoint prod-c-bbbbbbbb", "endpoint config prod-ec-bbbbbbbb"]
