"""The SageMaker target in inference-component mode, with botocore's Stubber: every request
the target sends is expected with its exact parameters (written out here, not built by the
code under test), in order, and answered as SageMaker and Application Auto Scaling answer."""

from __future__ import annotations

import io

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from lmiflow.sizing.packing import ComponentNeed, InstanceShape, pack

from lmiflow.targets.components_plan import ComponentPlan, ComponentResources, CopyScaling
from lmiflow.targets.sagemaker import SageMakerTarget
from lmiflow.targets.sagemaker_components import ComponentFailed
from tests.aws_fakes import no_aws

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/lmiflow-test"
TAGS = {"project": "lmiflow"}
IC_ARN = "arn:aws:sagemaker:us-east-1:123456789012:inference-component/llama"
SPEC = {
    "ModelName": "shared-m-22222222",
    "ComputeResourceRequirements": {"NumberOfAcceleratorDevicesRequired": 2.0,
                                    "NumberOfCpuCoresRequired": 2.0,
                                    "MinMemoryRequiredInMb": 15317},
    "StartupParameters": {"ModelDataDownloadTimeoutInSeconds": 600,
                          "ContainerStartupHealthCheckTimeoutInSeconds": 900},
}
POLICY_ARN = ("arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:0f0e0d0c-1111-2222-"
              "3333-444455556666:resource/sagemaker/inference-component/llama:policyName/"
              "llama-from-zero")


@pytest.fixture(autouse=True)
def _no_aws(monkeypatch, tmp_path):
    no_aws(monkeypatch, tmp_path, REGION)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def plan(min_copies: int = 0) -> ComponentPlan:
    shape = InstanceShape(instance_type="ml.g5.12xlarge", accelerators=4, memory_mb=196608,
                          cpu_cores=48)
    need = ComponentNeed(name="llama", accelerators=2, memory_mb=15317, cpu_cores=2, copies=2)
    return ComponentPlan(
        name="llama", candidate="llama-ic-22222222", endpoint="shared",
        instance_type="ml.g5.12xlarge",
        resources=ComponentResources(accelerators=2, memory_mb=15317, cpu_cores=2), copies=1,
        scaling=CopyScaling(min_copies=min_copies, max_copies=2, target_per_copy=8, why="test",
                            scale_in_cooldown_s=300, scale_out_cooldown_s=60),
        min_instances=0, max_instances=1, initial_instances=1, packing=pack([need], shape),
        startup_timeouts_s=(600, 900), rollback_alarms=["shared-5xx"])


@pytest.fixture
def target():
    clock = Clock()
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name=REGION)
    return SageMakerTarget(REGION, role_arn=ROLE, session=session, poll_interval_s=30,
                           clock=clock, sleep=clock.sleep, mode="inference_component")


def described(name: str, status: str, copies: int, model: str = "shared-m-22222222",
              reason: str | None = None) -> dict:
    d = {"InferenceComponentName": name,
         "InferenceComponentArn": f"arn:aws:sagemaker:us-east-1:123456789012:"
                                  f"inference-component/{name}",
         "EndpointName": "shared", "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:"
                                                  "endpoint/shared",
         "CreationTime": "2026-01-01T00:00:00Z", "LastModifiedTime": "2026-01-01T00:00:00Z",
         "InferenceComponentStatus": status,
         "Specification": {"ModelName": model},
         "RuntimeConfig": {"DesiredCopyCount": 1, "CurrentCopyCount": copies}}
    if reason:
        d["FailureReason"] = reason
    return d


def missing(stub: Stubber, operation: str, params: dict) -> None:
    stub.add_client_error(operation, "ValidationException",
                          "Could not find inference component", expected_params=params)


def test_candidate_component_is_placed_and_waited_for_until_a_copy_runs(target):
    with Stubber(target.sm) as sm:
        sm.add_response("create_inference_component", {"InferenceComponentArn": IC_ARN}, {
            "InferenceComponentName": "llama-ic-22222222", "EndpointName": "shared-c-22222222",
            "VariantName": "AllTraffic", "Specification": SPEC,
            "RuntimeConfig": {"CopyCount": 1}, "Tags": [{"Key": "project", "Value": "lmiflow"}]})
        name = {"InferenceComponentName": "llama-ic-22222222"}
        sm.add_response("describe_inference_component",
                        described("llama-ic-22222222", "Creating", 0), name)
        # InService before its copy is up: a request would still find no copy
        sm.add_response("describe_inference_component",
                        described("llama-ic-22222222", "InService", 0), name)
        sm.add_response("describe_inference_component",
                        described("llama-ic-22222222", "InService", 1), name)
        target.place_component("shared-c-22222222", "shared-m-22222222", plan(), TAGS, 3600)
        sm.assert_no_pending_responses()
    with Stubber(target.runtime) as rt:
        rt.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(b"{}"), 2)}, {
            "EndpointName": "shared-c-22222222", "InferenceComponentName": "llama-ic-22222222",
            "ContentType": "application/json", "Accept": "application/json",
            "Body": b'{"inputs": "hi"}'})
        assert target.invoke("shared-c-22222222", {"inputs": "hi"}) == b"{}"


def test_a_failed_candidate_component_says_why(target):
    with Stubber(target.sm) as sm:
        sm.add_response("create_inference_component", {"InferenceComponentArn": IC_ARN})
        sm.add_response("describe_inference_component", described(
            "llama-ic-22222222", "Failed", 0, reason="not enough accelerators"))
        with pytest.raises(ComponentFailed, match="not enough accelerators"):
            target.place_component("shared-c-22222222", "shared-m-22222222", plan(), TAGS,
                                   3600)


def test_cleanup_deletes_the_component_before_its_endpoint(target):
    with Stubber(target.sm) as sm:
        sm.add_response("list_inference_components", {"InferenceComponents": [{
            "InferenceComponentName": "llama-ic-22222222",
            "InferenceComponentArn": IC_ARN, "EndpointName": "shared-c-22222222",
            "EndpointArn": IC_ARN.replace("inference-component", "endpoint"),
            "VariantName": "AllTraffic",
            "CreationTime": "2026-01-01T00:00:00Z",
            "LastModifiedTime": "2026-01-01T00:00:00Z"}]},
            {"EndpointNameEquals": "shared-c-22222222"})
        name = {"InferenceComponentName": "llama-ic-22222222"}
        sm.add_response("delete_inference_component", {}, name)
        sm.add_response("describe_inference_component",
                        described("llama-ic-22222222", "Deleting", 0), name)
        missing(sm, "describe_inference_component", name)
        sm.add_response("delete_endpoint", {}, {"EndpointName": "shared-c-22222222"})
        assert target.delete_endpoint("shared-c-22222222") is True
        sm.assert_no_pending_responses()


def _candidate_gone(sm: Stubber) -> None:
    name = {"InferenceComponentName": "llama-ic-22222222"}
    sm.add_response("delete_inference_component", {}, name)
    missing(sm, "describe_inference_component", name)
    sm.add_response("list_inference_components", {"InferenceComponents": []},
                    {"EndpointNameEquals": "shared-c-22222222"})
    sm.add_response("delete_endpoint", {}, {"EndpointName": "shared-c-22222222"})
    sm.add_response("describe_endpoint", {
        "EndpointName": "shared", "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:"
                                                 "endpoint/shared",
        "EndpointConfigName": "shared-ec-11111111", "EndpointStatus": "InService",
        "CreationTime": "2026-01-01T00:00:00Z", "LastModifiedTime": "2026-01-01T00:00:00Z"},
        {"EndpointName": "shared"})


def _copies_scale(aas: Stubber, cw: Stubber) -> None:
    """The copies' auto scaling put in place after promotion (min copies 0: with the way
    back from zero)."""
    target_params = {"ServiceNamespace": "sagemaker",
                     "ResourceId": "inference-component/llama",
                     "ScalableDimension": "sagemaker:inference-component:DesiredCopyCount"}
    aas.add_response("register_scalable_target", {},
                     {**target_params, "MinCapacity": 0, "MaxCapacity": 2})
    aas.add_response("put_scaling_policy", {"PolicyARN": "arn:tracking", "Alarms": []}, {
        **target_params, "PolicyName": "llama-concurrency",
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 8.0, "PredefinedMetricSpecification": {
                "PredefinedMetricType":
                    "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution"},
            "ScaleInCooldown": 300, "ScaleOutCooldown": 60}})
    aas.add_response("put_scaling_policy", {"PolicyARN": POLICY_ARN}, {
        **target_params, "PolicyName": "llama-from-zero", "PolicyType": "StepScaling",
        "StepScalingPolicyConfiguration": {
            "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Maximum",
            "Cooldown": 60, "StepAdjustments": [
                {"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]}})
    cw.add_response("put_metric_alarm", {}, {
        "AlarmName": "llama-no-capacity",
        "AlarmDescription": "a request found no copy of llama: add one",
        "Namespace": "AWS/SageMaker", "MetricName": "NoCapacityInvocationFailures",
        "Dimensions": [{"Name": "InferenceComponentName", "Value": "llama"}],
        "Statistic": "Maximum", "Period": 30, "EvaluationPeriods": 1, "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "missing", "AlarmActions": [POLICY_ARN]})


def test_promotion_updates_production_copy_by_copy_and_scales_its_copies(target):
    with Stubber(target.sm) as sm, Stubber(target.autoscaling) as aas, \
            Stubber(target.cloudwatch) as cw:
        _candidate_gone(sm)
        name = {"InferenceComponentName": "llama"}
        sm.add_response("describe_inference_component",
                        described("llama", "InService", 1, model="shared-m-11111111"), name)
        sm.add_response("update_inference_component", {"InferenceComponentArn": IC_ARN}, {
            "InferenceComponentName": "llama", "Specification": SPEC,
            "DeploymentConfig": {
                "RollingUpdatePolicy": {
                    "MaximumBatchSize": {"Type": "COPY_COUNT", "Value": 1},
                    "WaitIntervalInSeconds": 120,
                    "RollbackMaximumBatchSize": {"Type": "COPY_COUNT", "Value": 1}},
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "shared-5xx"}]}}})
        sm.add_response("describe_inference_component", described("llama", "Updating", 1), name)
        sm.add_response("describe_inference_component", described("llama", "InService", 1),
                        name)
        _copies_scale(aas, cw)
        action = target.promote_component(
            "shared", "shared-c-22222222", "shared-ec-22222222", "shared-m-22222222", plan(),
            TAGS, 3600, wait_interval_s=120)
        for stub in (sm, aas, cw):
            stub.assert_no_pending_responses()
    assert action == "component llama updated (rolling, one copy at a time)"
    assert target.routes["shared"] == "llama"


def test_a_rolled_back_update_fails_the_promotion(target):
    with Stubber(target.sm) as sm:
        _candidate_gone(sm)
        sm.add_response("describe_inference_component",
                        described("llama", "InService", 1, model="shared-m-11111111"))
        sm.add_response("update_inference_component", {"InferenceComponentArn": IC_ARN})
        # SageMaker rolled the copies back to the old model
        sm.add_response("describe_inference_component",
                        described("llama", "InService", 1, model="shared-m-11111111"))
        with pytest.raises(ComponentFailed, match="rolled back"):
            target.promote_component("shared", "shared-c-22222222", "shared-ec-22222222",
                                     "shared-m-22222222", plan(min_copies=1), TAGS, 3600)


def test_endpoint_mode_has_no_component_steps():
    t = SageMakerTarget(REGION, role_arn=ROLE)
    assert t.promote_component("p", "c", "ec", "m", None, TAGS, 60) is None
    assert t.components_on("p") == []


def test_teardown_removes_production_scaling_before_its_component(target):
    with Stubber(target.sm) as sm, Stubber(target.autoscaling) as aas, \
            Stubber(target.cloudwatch) as cw:
        aas.add_response("deregister_scalable_target", {}, {
            "ServiceNamespace": "sagemaker", "ResourceId": "inference-component/llama",
            "ScalableDimension": "sagemaker:inference-component:DesiredCopyCount"})
        cw.add_response("delete_alarms", {}, {"AlarmNames": ["llama-no-capacity"]})
        sm.add_response("delete_inference_component", {}, {"InferenceComponentName": "llama"})
        missing(sm, "describe_inference_component", {"InferenceComponentName": "llama"})
        assert target.delete_component("llama") is True
        for stub in (sm, aas, cw):
            stub.assert_no_pending_responses()


def test_a_scale_to_zero_update_does_not_wait_for_a_copy(target):
    """Min copies 0 and no copy running: the update ends InService with none (a copy comes
    only with a request), so promotion returns there, and says production starts on the
    next request; waiting for a copy would wait out the timeout and fail the run."""
    with Stubber(target.sm) as sm, Stubber(target.autoscaling) as aas, \
            Stubber(target.cloudwatch) as cw:
        _candidate_gone(sm)
        sm.add_response("describe_inference_component",
                        described("llama", "InService", 0, model="shared-m-11111111"))
        sm.add_response("update_inference_component", {"InferenceComponentArn": IC_ARN})
        sm.add_response("describe_inference_component", described("llama", "Updating", 0))
        sm.add_response("describe_inference_component", described("llama", "InService", 0))
        _copies_scale(aas, cw)
        action = target.promote_component(
            "shared", "shared-c-22222222", "shared-ec-22222222", "shared-m-22222222", plan(),
            TAGS, 3600)
        for stub in (sm, aas, cw):
            stub.assert_no_pending_responses()
    assert "production starts on the next request" in action
    assert target.starts_on_request("shared")
    assert target._clock() < 3600  # two polls, not the whole timeout


def test_with_copies_kept_the_update_waits_for_one(target):
    """Min copies 1: InService with no copy yet is not done."""
    with Stubber(target.sm) as sm, Stubber(target.autoscaling) as aas:
        _candidate_gone(sm)
        sm.add_response("describe_inference_component",
                        described("llama", "InService", 1, model="shared-m-11111111"))
        sm.add_response("update_inference_component", {"InferenceComponentArn": IC_ARN})
        sm.add_response("describe_inference_component", described("llama", "InService", 0))
        sm.add_response("describe_inference_component", described("llama", "InService", 1))
        aas.add_response("register_scalable_target", {})
        aas.add_response("put_scaling_policy", {"PolicyARN": "arn:tracking", "Alarms": []})
        action = target.promote_component(
            "shared", "shared-c-22222222", "shared-ec-22222222", "shared-m-22222222",
            plan(min_copies=1), TAGS, 3600)
        sm.assert_no_pending_responses()
    assert "next request" not in action and not target.starts_on_request("shared")


def _existing(sm: Stubber, instance_type: str, max_instances: int) -> None:
    sm.add_response("describe_endpoint", {
        "EndpointName": "shared", "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:"
                                                 "endpoint/shared",
        "EndpointConfigName": "shared-ec-11111111", "EndpointStatus": "InService",
        "CreationTime": "2026-01-01T00:00:00Z", "LastModifiedTime": "2026-01-01T00:00:00Z"},
        {"EndpointName": "shared"})
    sm.add_response("describe_endpoint_config", {
        "EndpointConfigName": "shared-ec-11111111",
        "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/"
                             "shared-ec-11111111",
        "CreationTime": "2026-01-01T00:00:00Z",
        "ProductionVariants": [{
            "VariantName": "AllTraffic", "InstanceType": instance_type,
            "InitialInstanceCount": 1,
            "ManagedInstanceScaling": {"Status": "ENABLED", "MinInstanceCount": 0,
                                       "MaxInstanceCount": max_instances}}]},
        {"EndpointConfigName": "shared-ec-11111111"})


@pytest.mark.parametrize(("instance_type", "max_instances", "field"), [
    ("ml.g5.12xlarge", 1, "inference_component.max_instances"),
    ("ml.g6e.12xlarge", 2, "instance.instance_type"),
])
def test_a_shared_endpoint_that_cannot_hold_the_component_is_refused_first(
        target, instance_type, max_instances, field):
    """The first config deployed to a shared endpoint fixed its instance type and limits (its
    endpoint config); a later config that needs more is exit 2 at preflight, naming that
    endpoint config and the figure, before anything is created."""
    from lmiflow.errors import UserInputError

    wants_two = plan().model_copy(update={"max_instances": 2})
    with Stubber(target.sm) as sm:
        _existing(sm, instance_type, max_instances)
        with pytest.raises(UserInputError) as err:
            target.check_shared_endpoint("shared", wants_two)
        sm.assert_no_pending_responses()
    assert err.value.field == field and "shared-ec-11111111" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_shared_endpoint_with_room_or_none_yet_passes(target):
    with Stubber(target.sm) as sm:
        _existing(sm, "ml.g5.12xlarge", 2)
        target.check_shared_endpoint("shared", plan().model_copy(update={"max_instances": 2}))
        sm.add_client_error("describe_endpoint", "ValidationException",
                            "Could not find endpoint", expected_params={"EndpointName": "shared"})
        target.check_shared_endpoint("shared", plan())  # a first deploy sets them
        sm.assert_no_pending_responses()
    assert target.check_shared_endpoint("shared", None) is None  # endpoint mode: nothing asked
