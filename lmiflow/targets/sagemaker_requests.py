"""The SageMaker requests lmiflow sends, built as data (pure): the target sends them, dry runs
list them, the IAM policy is written from them. Names, environment, tags and bounds are
checked here, before anything is sent; the API's own limits are checked by aws_requests."""

from __future__ import annotations

import logging
import math
from typing import Any

from lmiflow import patterns
from lmiflow.targets.aws_requests import AwsRequest, request, split_s3
from lmiflow.targets.base import EndpointVariant, TrafficPolicy, check_name

# the target's log: what the builders note (a volume left out) reads with its other lines
logger = logging.getLogger("lmiflow.targets.sagemaker")

PROJECT_TAGS = {"project": "lmiflow"}
VARIANT_NAME = "AllTraffic"
BASELINE_FILE = "baseline.json"
CALIBRATION_FILE = "calibration.json"


def lmi_image_uri(region: str, version: str | None = None, framework: str = "djl-lmi") -> str:
    """The LMI (DJL Serving) image for a region, from the SageMaker SDK's offline tables.

    `version` is the DJL version (e.g. 0.33.0 -> tag 0.33.0-lmi15.0.0-cu128); None is the SDK's
    latest. framework `djl-tensorrtllm` gives the TensorRT-LLM image.
    """
    from sagemaker.core import image_uris  # sagemaker-core; `from sagemaker import` is SDK v2

    try:
        return image_uris.retrieve(framework=framework, region=region, version=version)
    except ValueError as exc:
        raise ValueError(f"serving.image_version: {exc}") from None


def sizing_timeouts(weights_bytes: int) -> tuple[int, int, int]:
    """(VolumeSizeInGB, ModelDataDownloadTimeoutInSeconds,
    ContainerStartupHealthCheckTimeoutInSeconds) for a model of this size, within API bounds.

    Assumptions: the disk holds the weights once more than the checkpoint (safetensors copy,
    caches) plus 30 GB for the image's scratch; weights download at >= 100 MB/s from S3 and the
    container fetches from the Hub and loads at >= 50 MB/s, plus 10 minutes for engine start
    (CUDA graphs, NCCL). Clamped to 1-512 GB and 60-3600 s.
    """
    gb = max(0, weights_bytes) / 1e9
    volume = min(512, max(1, math.ceil(gb * 1.5 + 30)))
    download = min(3600, max(60, math.ceil(600 + gb * 10)))
    startup = min(3600, max(60, math.ceil(600 + gb * 20)))
    return volume, download, startup


def deployment_config(policy: TrafficPolicy) -> dict[str, Any]:
    """update_endpoint's DeploymentConfig: blue/green with the policy's traffic shifting and,
    when alarms are named, automatic rollback on them."""
    if not 0 <= policy.wait_interval_s <= 3600:
        raise ValueError("wait_interval_s: 0-3600")
    if not 0 <= policy.termination_wait_s <= 3600:
        raise ValueError("termination_wait_s: 0-3600")
    routing: dict[str, Any] = {"Type": policy.type, "WaitIntervalInSeconds": policy.wait_interval_s}
    if policy.type == "CANARY":
        size = policy.canary_size_pct if policy.canary_size_pct is not None else 10
        if not 1 <= size <= 50:
            raise ValueError("canary_size_pct: 1-50 (at most half the fleet)")
        routing["CanarySize"] = {"Type": "CAPACITY_PERCENT", "Value": size}
    elif policy.type == "LINEAR":
        step = policy.linear_step_pct if policy.linear_step_pct is not None else 20
        if not 10 <= step <= 50:
            raise ValueError("linear_step_pct: 10-50")
        routing["LinearStepSize"] = {"Type": "CAPACITY_PERCENT", "Value": step}
    config: dict[str, Any] = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": policy.termination_wait_s,
        }
    }
    if policy.alarms:
        if len(policy.alarms) > 10:
            raise ValueError("alarms: at most 10")
        config["AutoRollbackConfiguration"] = {
            "Alarms": [{"AlarmName": a} for a in policy.alarms]
        }
    return config


def volume_size_supported(instance_type: str) -> bool:
    """Instances with local NVMe storage (g4dn, g5, g6, p4d, p5, ...) reject VolumeSizeInGB;
    the SageMaker SDK keeps that list, so ask it."""
    from sagemaker.core.common_utils import volume_size_supported as supported

    return supported(instance_type)


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    merged = {**PROJECT_TAGS, **tags}
    out = []
    for k, v in merged.items():
        if (not (1 <= len(k) <= 128) or not patterns.matches(patterns.TAG_TEXT, k)
                or k.lower().startswith("aws:")):
            raise ValueError(f"tag key {k!r}: 1-128 letters, digits, spaces or _.:/=+-@")
        if len(v) > 256 or not patterns.matches(patterns.TAG_TEXT, v):
            raise ValueError(f"tag {k}: value up to 256 letters, digits, spaces or _.:/=+-@")
        out.append({"Key": k, "Value": v})
    return out


def check_env(env: dict[str, str]) -> None:
    if len(env) > 100:
        raise ValueError("environment: at most 100 variables")
    for k, v in env.items():
        if not patterns.matches(patterns.ENV_KEY, k) or len(k) > 1024:
            raise ValueError(f"environment variable name {k!r}: letters, digits and '_'")
        if not isinstance(v, str) or len(v) > 1024:
            raise ValueError(f"environment variable {k}: a string of at most 1024 characters")


def lease_key(prefix: str, endpoint: str) -> str:
    """Where the run lease of an endpoint lives in the S3 prefix. Lowercased: SageMaker's
    endpoint names are case-insensitive (configs named A and a deploy one endpoint), S3 keys
    are not, so two such runs must contend for one key."""
    return f"{prefix}leases/{endpoint.lower()}.json"


# ---- requests as data (pure): the target sends these, dry runs list them ------------------


def create_model_request(
    name: str, role_arn: str, image_uri: str, env: dict[str, str], model_data: str,
    tags: dict[str, str], *, network_isolation: bool = False, vpc: dict | None = None,
) -> AwsRequest:
    """CreateModel for the LMI container. model_data: the S3 prefix SageMaker copies to
    /opt/ml/model before the container starts (serving.properties, and the weights when they
    are staged); empty for env-only packaging. network_isolation: the container gets no
    network at all, which only works when the weights come through model_data."""
    check_name("model", name)
    check_env(env)
    container: dict[str, Any] = {"Image": image_uri, "Environment": dict(env)}
    if model_data:
        if not model_data.startswith("s3://") or not model_data.endswith("/"):
            raise ValueError(f"model_data {model_data!r}: an s3:// prefix ending in /")
        container["ModelDataSource"] = {
            "S3DataSource": {
                "S3Uri": model_data,
                "S3DataType": "S3Prefix",
                "CompressionType": "None",
            }
        }
    elif "HF_MODEL_ID" not in env:
        raise ValueError("env-only packaging needs HF_MODEL_ID (no model files in S3)")
    params: dict[str, Any] = {
        "ModelName": name, "ExecutionRoleArn": role_arn, "PrimaryContainer": container,
        "Tags": tag_list(tags),
    }
    if network_isolation:
        params["EnableNetworkIsolation"] = True
    if vpc:
        params["VpcConfig"] = dict(vpc)
    return AwsRequest(service="sagemaker", operation="CreateModel", params=params)


def create_endpoint_config_request(
    name: str, model_name: str, variant: EndpointVariant, tags: dict[str, str]
) -> AwsRequest:
    check_name("endpoint config", name)
    check_name("model", model_name)
    pv: dict[str, Any] = {
        "VariantName": VARIANT_NAME,
        "ModelName": model_name,
        "InstanceType": variant.instance_type,
        "InitialInstanceCount": variant.instance_count,
    }
    if variant.volume_size_gb is not None:
        if not volume_size_supported(variant.instance_type):
            logger.info("%s has local NVMe storage: VolumeSizeInGB left out",
                        variant.instance_type)
        else:
            pv["VolumeSizeInGB"] = bounded("volume_size_gb", variant.volume_size_gb, 1, 512)
    if variant.model_data_download_timeout_s is not None:
        pv["ModelDataDownloadTimeoutInSeconds"] = bounded(
            "model_data_download_timeout_s", variant.model_data_download_timeout_s, 60, 3600
        )
    if variant.container_startup_health_check_timeout_s is not None:
        pv["ContainerStartupHealthCheckTimeoutInSeconds"] = bounded(
            "container_startup_health_check_timeout_s",
            variant.container_startup_health_check_timeout_s, 60, 3600,
        )
    if variant.inference_ami_version is not None:
        pv["InferenceAmiVersion"] = variant.inference_ami_version
    if variant.routing_strategy is not None:
        # LLM requests differ in length by orders of magnitude: random routing piles long ones
        # on one instance while another idles.
        pv["RoutingConfig"] = {"RoutingStrategy": variant.routing_strategy}
    return AwsRequest(service="sagemaker", operation="CreateEndpointConfig", params={
        "EndpointConfigName": name, "ProductionVariants": [pv], "Tags": tag_list(tags)})


def create_endpoint_request(name: str, config_name: str, tags: dict[str, str]) -> AwsRequest:
    check_name("endpoint", name)
    check_name("endpoint config", config_name)
    return AwsRequest(service="sagemaker", operation="CreateEndpoint", params={
        "EndpointName": name, "EndpointConfigName": config_name, "Tags": tag_list(tags)})


def update_endpoint_request(name: str, config_name: str, policy: TrafficPolicy,
                            retain_count: bool = False) -> AwsRequest:
    """retain_count: the new fleet starts at the instance count production scaled to
    (targets.autoscaling_plan explains when)."""
    from lmiflow.targets.autoscaling_plan import retain_count_params

    check_name("endpoint", name)
    check_name("endpoint config", config_name)
    return AwsRequest(service="sagemaker", operation="UpdateEndpoint", params={
        "EndpointName": name, "EndpointConfigName": config_name,
        "DeploymentConfig": deployment_config(policy),
        **(retain_count_params() if retain_count else {})})


def put_object_request(uri: str, body: bytes, content_type: str) -> AwsRequest:
    m = patterns.S3_URI.fullmatch(uri) if isinstance(uri, str) else None
    if not m or not m.group("key") or uri.endswith("/"):
        raise ValueError(f"{uri!r} is not s3://bucket/key")
    return AwsRequest(service="s3", operation="PutObject", params={
        "Bucket": m.group("bucket"), "Key": m.group("key"), "Body": body,
        "ContentType": content_type})


def staged_files_prefix(s3_uri: str, model_name: str) -> str:
    """Where a model's serving.properties goes: its own folder under target.s3_uri."""
    bucket, prefix = split_s3(s3_uri)
    return f"s3://{bucket}/{prefix}{model_name}/"


def describe_alarms_request(names: list[str]) -> AwsRequest:
    """Which of the rollback alarms exist (metric and composite alarms alike)."""
    return request("cloudwatch", "DescribeAlarms", AlarmNames=list(names),
                    AlarmTypes=["MetricAlarm", "CompositeAlarm"])


def bounded(field: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise ValueError(f"{field}: {value} is outside the API's bounds {lo}-{hi}")
    return value
