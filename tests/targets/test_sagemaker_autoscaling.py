"""Autoscaling on SageMaker: every Application Auto Scaling request with its parameters
(botocore Stubber, checked against the service model), the blue/green update that keeps the
scaled count (and removes the scalable target first only when the instance type changes),
the IAM permissions, and the same calls against moto in server mode."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber
from lmiflow.sizing.autoscaling import scaling_plan

from lmiflow.targets.autoscaling_plan import (
    describe_targets_request,
    put_policy_request,
    register_request,
    removal_requests,
)
from lmiflow.targets.aws_requests import validate
from lmiflow.targets.iam import runner_policy
from lmiflow.targets.sagemaker import SageMakerTarget
from tests.aws_fakes import no_aws
from tests.targets.test_sagemaker import ARN, REGION, ROLE, _described, _session

RID = "endpoint/prod/variant/AllTraffic"
DIM = "sagemaker:variant:DesiredInstanceCount"
NS = "sagemaker"
POLICY = "lmiflow-prod-concurrency"
# a plan by hand: batch 6, 8 within the gates -> ceiling 6; 6 x (1 - 0.25) = 4.5 -> 4 per
# copy; 2 copies per instance -> TargetValue 8
PLAN = scaling_plan(min_instances=1, max_instances=3, target="auto", headroom_pct=25,
                    scale_in_cooldown_s=600, scale_out_cooldown_s=60, plan_max_per_copy=8,
                    batch_per_copy=6, copies_per_instance=2, initial_instances=1)


@pytest.fixture(autouse=True)
def _no_aws(monkeypatch, tmp_path):
    no_aws(monkeypatch, tmp_path, REGION)


@pytest.fixture
def target():
    return SageMakerTarget(REGION, role_arn=ROLE, session=_session())


@pytest.fixture
def stubs(target):
    with Stubber(target.sm) as sm, Stubber(target.autoscaling) as aas:
        yield sm, aas
        sm.assert_no_pending_responses()
        aas.assert_no_pending_responses()


def _registered(aas, registered: bool):
    found = [{"ServiceNamespace": NS, "ResourceId": RID, "ScalableDimension": DIM,
              "MinCapacity": 1, "MaxCapacity": 3, "RoleARN": ROLE,
              "CreationTime": "2026-01-01T00:00:00Z"}] if registered else []
    aas.add_response("describe_scalable_targets", {"ScalableTargets": found}, {
        "ServiceNamespace": NS, "ResourceIds": [RID], "ScalableDimension": DIM})


def _config(sm, name, instance_type):
    sm.add_response("describe_endpoint_config", {
        "EndpointConfigName": name, "EndpointConfigArn": ARN + name,
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "m",
                                "InstanceType": instance_type, "InitialInstanceCount": 1}],
        "CreationTime": "2026-01-01T00:00:00Z"}, {"EndpointConfigName": name})


def test_the_plan_by_hand():
    assert (PLAN.target_per_copy, PLAN.target_per_instance) == (4, 8.0)


def test_apply_registers_the_variant_and_a_target_tracking_policy(target, stubs):
    _, aas = stubs
    aas.add_response("register_scalable_target", {}, {
        "ServiceNamespace": NS, "ResourceId": RID, "ScalableDimension": DIM,
        "MinCapacity": 1, "MaxCapacity": 3})
    aas.add_response("put_scaling_policy", {"PolicyARN": "arn:aws:autoscaling:x"}, {
        "ServiceNamespace": NS, "PolicyName": POLICY, "ResourceId": RID,
        "ScalableDimension": DIM, "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 8.0,
            "PredefinedMetricSpecification": {
                "PredefinedMetricType":
                    "SageMakerVariantConcurrentRequestsPerModelHighResolution"},
            "ScaleInCooldown": 600, "ScaleOutCooldown": 60}})
    lines = target.apply_autoscaling("prod", PLAN)
    assert "1..3 instances" in lines[0] and "at 8" in lines[1]


def test_remove_deletes_the_policy_then_deregisters(target, stubs):
    _, aas = stubs
    _registered(aas, True)
    aas.add_response("delete_scaling_policy", {}, {
        "ServiceNamespace": NS, "PolicyName": POLICY, "ResourceId": RID,
        "ScalableDimension": DIM})
    aas.add_response("deregister_scalable_target", {}, {
        "ServiceNamespace": NS, "ResourceId": RID, "ScalableDimension": DIM})
    assert target.remove_autoscaling("prod") is True


def test_remove_of_a_variant_that_does_not_scale_sends_nothing_else(target, stubs):
    _, aas = stubs
    _registered(aas, False)
    assert target.remove_autoscaling("prod") is False


def test_remove_tolerates_a_policy_already_gone(target, stubs):
    _, aas = stubs
    _registered(aas, True)
    aas.add_client_error("delete_scaling_policy", "ObjectNotFoundException", "No policy",
                         expected_params={"ServiceNamespace": NS, "PolicyName": POLICY,
                                          "ResourceId": RID, "ScalableDimension": DIM})
    aas.add_response("deregister_scalable_target", {}, {
        "ServiceNamespace": NS, "ResourceId": RID, "ScalableDimension": DIM})
    assert target.remove_autoscaling("prod") is True


def _update_params(retain: bool) -> dict:
    out = {"EndpointName": "prod", "EndpointConfigName": "prod-ec-01234567",
           "DeploymentConfig": {"BlueGreenUpdatePolicy": {
               "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE",
                                               "WaitIntervalInSeconds": 0},
               "TerminationWaitInSeconds": 0}}}
    if retain:
        out |= {"RetainAllVariantProperties": True, "ExcludeRetainedVariantProperties": [
            {"VariantPropertyType": "DesiredWeight"},
            {"VariantPropertyType": "DataCaptureConfig"}]}
    return out


def test_update_of_a_scaled_variant_keeps_the_target_and_the_count(target, stubs):
    """Same instance type: SageMaker allows the update with the target registered."""
    sm, aas = stubs
    sm.add_response("describe_endpoint", _described("prod", "InService", config="prod-ec-aa"),
                    {"EndpointName": "prod"})
    _registered(aas, True)
    _config(sm, "prod-ec-aa", "ml.g5.2xlarge")
    _config(sm, "prod-ec-01234567", "ml.g5.2xlarge")
    sm.add_response("update_endpoint", {"EndpointArn": ARN + "prod"}, _update_params(True))
    target.update_endpoint("prod", "prod-ec-01234567", autoscaled=True)


def test_update_that_changes_the_instance_type_deregisters_first(target, stubs):
    sm, aas = stubs
    sm.add_response("describe_endpoint", _described("prod", "InService", config="prod-ec-aa"),
                    {"EndpointName": "prod"})
    _registered(aas, True)
    _config(sm, "prod-ec-aa", "ml.g5.2xlarge")
    _config(sm, "prod-ec-01234567", "ml.g6.2xlarge")
    _registered(aas, True)
    aas.add_response("delete_scaling_policy", {}, {
        "ServiceNamespace": NS, "PolicyName": POLICY, "ResourceId": RID,
        "ScalableDimension": DIM})
    aas.add_response("deregister_scalable_target", {}, {
        "ServiceNamespace": NS, "ResourceId": RID, "ScalableDimension": DIM})
    sm.add_response("update_endpoint", {"EndpointArn": ARN + "prod"}, _update_params(True))
    target.update_endpoint("prod", "prod-ec-01234567", autoscaled=True)


def test_update_of_a_variant_not_yet_scaled_takes_the_configs_count(target, stubs):
    sm, aas = stubs
    sm.add_response("describe_endpoint", _described("prod", "InService"),
                    {"EndpointName": "prod"})
    _registered(aas, False)
    sm.add_response("update_endpoint", {"EndpointArn": ARN + "prod"}, _update_params(False))
    target.update_endpoint("prod", "prod-ec-01234567", autoscaled=True)


def test_scaling_requests_are_valid_and_the_runner_may_send_them():
    reqs = [describe_targets_request("prod", "AllTraffic"),
            *removal_requests("prod", "AllTraffic"),
            register_request("prod", "AllTraffic", PLAN),
            put_policy_request("prod", "AllTraffic", PLAN)]
    for r in reqs:
        validate(r)
    statements = runner_policy(reqs, REGION, ROLE)["Statement"]
    allowed = {a for st in statements for a in st["Action"]}
    assert {"application-autoscaling:RegisterScalableTarget",
            "application-autoscaling:PutScalingPolicy",
            "application-autoscaling:DeregisterScalableTarget",
            "application-autoscaling:DeleteScalingPolicy",
            "application-autoscaling:DescribeScalableTargets",
            "iam:CreateServiceLinkedRole", "cloudwatch:PutMetricAlarm",
            "cloudwatch:DeleteAlarms"} <= allowed
    (slr,) = [st for st in statements if "iam:CreateServiceLinkedRole" in st["Action"]]
    assert slr["Condition"] == {"StringEquals": {
        "iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"}}
    assert slr["Resource"] == ["arn:aws:iam::123456789012:role/aws-service-role/sagemaker."
                               "application-autoscaling.amazonaws.com/AWSServiceRoleForApplic"
                               "ationAutoScaling_SageMakerEndpoint"]
    (alarms,) = [st for st in statements if "cloudwatch:PutMetricAlarm" in st["Action"]]
    assert alarms["Resource"] == [
        f"arn:aws:cloudwatch:{REGION}:123456789012:alarm:TargetTracking-{RID}-*"]


def test_apply_update_and_remove_against_moto(monkeypatch):
    from tests.aws_fakes import moto_server

    with moto_server() as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        target = SageMakerTarget(REGION, role_arn=ROLE, session=_session(fresh=True))
        target.apply_autoscaling("prod", PLAN)
        aas = boto3.client("application-autoscaling", region_name=REGION, endpoint_url=url)
        (st,) = aas.describe_scalable_targets(ServiceNamespace=NS)["ScalableTargets"]
        assert (st["ResourceId"], st["MinCapacity"], st["MaxCapacity"]) == (RID, 1, 3)
        (pol,) = aas.describe_scaling_policies(ServiceNamespace=NS)["ScalingPolicies"]
        tt = pol["TargetTrackingScalingPolicyConfiguration"]
        assert (pol["PolicyName"], tt["TargetValue"]) == (POLICY, 8.0)
        # registering again with other numbers updates in place (a later promotion)
        target.apply_autoscaling("prod", PLAN.model_copy(update={"max_instances": 5}))
        (st,) = aas.describe_scalable_targets(ServiceNamespace=NS)["ScalableTargets"]
        assert st["MaxCapacity"] == 5
        assert len(aas.describe_scaling_policies(ServiceNamespace=NS)["ScalingPolicies"]) == 1
        assert target.remove_autoscaling("prod") is True
        assert aas.describe_scalable_targets(ServiceNamespace=NS)["ScalableTargets"] == []
        assert aas.describe_scaling_policies(ServiceNamespace=NS)["ScalingPolicies"] == []
        assert target.remove_autoscaling("prod") is False
