"""Application Auto Scaling requests for a SageMaker endpoint variant, built as data: what the
SageMaker target sends after promotion, what `--dry-run` lists and what the IAM policy covers.

The scalable target is the production variant's DesiredInstanceCount; the policy is target
tracking on SageMakerVariantConcurrentRequestsPerModelHighResolution, which counts the requests
one model container (one instance, all its copies) holds, queued ones included, and is sent
every 10 s, so scale-out reacts faster than on the per-minute invocation metrics. Its
TargetValue is the plan's per-copy target times the copies per instance
(sizing.autoscaling).

Blue/green updates and autoscaling (SageMaker developer guide, "Update endpoints that use auto
scaling", https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-scaling-update.html):
UpdateEndpoint fails while the variant is a scalable target if the update changes the
variant's instance type (or removes the variant); changing only the model is allowed. Auto
scaling is blocked while the update runs either way, and UpdateEndpoint with
RetainAllVariantProperties keeps the variant's current DesiredInstanceCount instead of the new
config's InitialInstanceCount. So lmiflow keeps scaling continuous like this: the variant name
never changes (blue/green requires that too), the update retains the instance count production
scaled to (weights and data capture come from the new config), the scalable target is
deregistered first only when the instance type changes, and the target and policy are
registered again (RegisterScalableTarget and PutScalingPolicy update in place) once production
serves the new config.
"""

from __future__ import annotations

from typing import Any

from lmiflow.sizing.autoscaling import ScalingPlan
from lmiflow.targets.aws_requests import AwsRequest

SERVICE = "application-autoscaling"
NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantConcurrentRequestsPerModelHighResolution"
# UpdateEndpoint keeps only the instance count production scaled to; the rest follows the
# new endpoint config, so what the dry run shows of the config is what serves.
NOT_RETAINED = ("DesiredWeight", "DataCaptureConfig")


# What preflight simulates for a run that scales (scalable targets have no ARN to name).
IAM_ACTIONS = tuple(f"application-autoscaling:{op}" for op in (
    "DescribeScalableTargets", "RegisterScalableTarget", "PutScalingPolicy",
    "DeleteScalingPolicy", "DeregisterScalableTarget"))


def resource_id(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def policy_name(endpoint: str) -> str:
    """One policy per endpoint, named for it: PutScalingPolicy with the same name updates it."""
    return f"lmiflow-{endpoint}-concurrency"


def _r(operation: str, **params: Any) -> AwsRequest:
    return AwsRequest(service=SERVICE, operation=operation,
                      params={"ServiceNamespace": NAMESPACE, **params})


def register_request(endpoint: str, variant: str, plan: ScalingPlan) -> AwsRequest:
    return _r("RegisterScalableTarget", ResourceId=resource_id(endpoint, variant),
              ScalableDimension=DIMENSION, MinCapacity=plan.min_instances,
              MaxCapacity=plan.max_instances)


def put_policy_request(endpoint: str, variant: str, plan: ScalingPlan) -> AwsRequest:
    return _r("PutScalingPolicy", PolicyName=policy_name(endpoint),
              ResourceId=resource_id(endpoint, variant), ScalableDimension=DIMENSION,
              PolicyType="TargetTrackingScaling",
              TargetTrackingScalingPolicyConfiguration={
                  "TargetValue": plan.target_per_instance,
                  "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
                  "ScaleInCooldown": plan.scale_in_cooldown_s,
                  "ScaleOutCooldown": plan.scale_out_cooldown_s})


def describe_targets_request(endpoint: str, variant: str) -> AwsRequest:
    return _r("DescribeScalableTargets", ResourceIds=[resource_id(endpoint, variant)],
              ScalableDimension=DIMENSION)


def delete_policy_request(endpoint: str, variant: str) -> AwsRequest:
    return _r("DeleteScalingPolicy", PolicyName=policy_name(endpoint),
              ResourceId=resource_id(endpoint, variant), ScalableDimension=DIMENSION)


def deregister_request(endpoint: str, variant: str) -> AwsRequest:
    return _r("DeregisterScalableTarget", ResourceId=resource_id(endpoint, variant),
              ScalableDimension=DIMENSION)


def retain_count_params() -> dict[str, Any]:
    """UpdateEndpoint parameters that keep the count production scaled to."""
    return {"RetainAllVariantProperties": True,
            "ExcludeRetainedVariantProperties": [{"VariantPropertyType": p}
                                                 for p in NOT_RETAINED]}


def removal_requests(endpoint: str, variant: str) -> list[AwsRequest]:
    """What removes autoscaling from a variant: the policy, then the scalable target."""
    return [delete_policy_request(endpoint, variant), deregister_request(endpoint, variant)]
