"""SageMaker target: LMI endpoints through boto3 (models, endpoint configs, endpoints, S3 staging).

Everything that touches AWS is here, behind targets.base.Target. Pure helpers (names, timeouts,
the blue/green DeploymentConfig, stream reassembly) are module functions so they are testable
without a client. boto3 and the SageMaker SDK are imported lazily: `lmiflow --help` and
`deploy --dry-run` must not pay for them (or reach AWS).

Retries: the control plane uses botocore's `standard` (or `adaptive`) mode. Note botocore's
`retries={"max_attempts": n}` means n *retries* (n + 1 calls); `total_max_attempts` counts the
first call, so the runtime client uses `total_max_attempts=1`: a benchmark request is tried
once, and a retry never hides an error or doubles a latency.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

from lmiflow import patterns
from lmiflow.targets import s3_store
from lmiflow.targets.aws_requests import AwsRequest, guard, method_name, validate
from lmiflow.targets.base import (
    EndpointBusy,
    EndpointLock,
    EndpointStatus,
    EndpointVariant,
    ModelFiles,
    ModelPackage,
    PlannedRun,
    StoredReport,
    StoreOffline,
    Target,
    TrafficPolicy,
    check_name,
)
from lmiflow.targets.sagemaker_components import ComponentOps
from lmiflow.targets.weights import ModelSource, WeightsPlan, s3_source

if TYPE_CHECKING:
    from pydantic import SecretStr

    from lmiflow.sizing.autoscaling import ScalingPlan
    from lmiflow.targets.components_plan import ComponentPlan
    from lmiflow.targets.staging import Progress, StagingReport

logger = logging.getLogger(__name__)

PROJECT_TAGS = {"project": "lmiflow"}
VARIANT_NAME = "AllTraffic"
BUSY_STATUSES = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")
BASELINE_FILE = "baseline.json"
CALIBRATION_FILE = "calibration.json"


class StreamError(RuntimeError):
    """A ModelStreamError or InternalStreamFailure event in a response stream."""

    def __init__(self, kind: str, message: str, code: str | None = None):
        self.kind = kind
        self.code = code
        super().__init__(f"{kind}: {message}" + (f" (code {code})" if code else ""))


# ---- pure helpers ---------------------------------------------------------------------------


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


def iter_json_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Whole lines (without the newline) from chunks whose boundaries fall anywhere, as
    invoke_endpoint_with_response_stream's PayloadPart events do. Blank lines are skipped; a
    last line without a newline is still yielded."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        if b"\n" not in chunk:
            continue
        *lines, buf = buf.split(b"\n")
        for line in lines:
            line = line.rstrip(b"\r")
            if line.strip():
                yield line
    if buf.strip():
        yield buf.rstrip(b"\r")


def volume_size_supported(instance_type: str) -> bool:
    """Instances with local NVMe storage (g4dn, g5, g6, p4d, p5, ...) reject VolumeSizeInGB;
    the SageMaker SDK keeps that list, so ask it."""
    from sagemaker.core.common_utils import volume_size_supported as supported

    return supported(instance_type)


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
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


def _check_env(env: dict[str, str]) -> None:
    if len(env) > 100:
        raise ValueError("environment: at most 100 variables")
    for k, v in env.items():
        if not patterns.matches(patterns.ENV_KEY, k) or len(k) > 1024:
            raise ValueError(f"environment variable name {k!r}: letters, digits and '_'")
        if not isinstance(v, str) or len(v) > 1024:
            raise ValueError(f"environment variable {k}: a string of at most 1024 characters")


def _error(exc: Exception) -> tuple[str, str]:
    resp = getattr(exc, "response", None) or {}
    err = resp.get("Error", {})
    return str(err.get("Code", "")), str(err.get("Message", ""))


def _is_missing(exc: Exception) -> bool:
    code, msg = _error(exc)
    return code in ("ValidationException", "ValidationError") and "Could not find" in msg


def _is_existing(exc: Exception) -> bool:
    code, msg = _error(exc)
    return code in ("ValidationException", "ValidationError") and "already exist" in msg


def lease_key(prefix: str, endpoint: str) -> str:
    """Where the run lease of an endpoint lives in the S3 prefix. Lowercased: SageMaker's
    endpoint names are case-insensitive (configs named A and a deploy one endpoint), S3 keys
    are not, so two such runs must contend for one key."""
    return f"{prefix}leases/{endpoint.lower()}.json"


def _split_s3(uri: str) -> tuple[str, str]:
    m = patterns.S3_URI.fullmatch(uri) if isinstance(uri, str) else None
    if not m:
        raise ValueError(f"target.s3_uri: {uri!r} is not s3://bucket/prefix/")
    prefix = m.group("key") or ""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return m.group("bucket"), prefix


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
    _check_env(env)
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
        "Tags": _tag_list(tags),
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
            pv["VolumeSizeInGB"] = _bounded("volume_size_gb", variant.volume_size_gb, 1, 512)
    if variant.model_data_download_timeout_s is not None:
        pv["ModelDataDownloadTimeoutInSeconds"] = _bounded(
            "model_data_download_timeout_s", variant.model_data_download_timeout_s, 60, 3600
        )
    if variant.container_startup_health_check_timeout_s is not None:
        pv["ContainerStartupHealthCheckTimeoutInSeconds"] = _bounded(
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
        "EndpointConfigName": name, "ProductionVariants": [pv], "Tags": _tag_list(tags)})


def create_endpoint_request(name: str, config_name: str, tags: dict[str, str]) -> AwsRequest:
    check_name("endpoint", name)
    check_name("endpoint config", config_name)
    return AwsRequest(service="sagemaker", operation="CreateEndpoint", params={
        "EndpointName": name, "EndpointConfigName": config_name, "Tags": _tag_list(tags)})


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
    bucket, prefix = _split_s3(s3_uri)
    return f"s3://{bucket}/{prefix}{model_name}/"


def describe_alarms_request(names: list[str]) -> AwsRequest:
    """Which of the rollback alarms exist (metric and composite alarms alike)."""
    return _request("cloudwatch", "DescribeAlarms", AlarmNames=list(names),
                    AlarmTypes=["MetricAlarm", "CompositeAlarm"])


def _request(service: str, operation: str, **params: Any) -> AwsRequest:
    return AwsRequest(service=service, operation=operation, params=params)


# ---- the target -----------------------------------------------------------------------------


class SageMakerTarget(ComponentOps, Target):
    """Target on SageMaker real-time endpoints (targets.base.Target). Every request is built
    as an AwsRequest, checked against botocore's service model and then sent; the clients are
    guarded too, so requests boto3 builds itself (paginators, multipart uploads) are checked."""

    kind = "sagemaker"
    shifts_traffic = True

    def __init__(
        self,
        region: str,
        role_arn: str | None = None,
        s3_uri: str | None = None,
        credentials_block: str | None = None,
        session: Any = None,
        poll_interval_s: float = 30,
        *,
        packaging: Literal["s3", "env"] = "s3",
        vpc: dict | None = None,
        retry_mode: Literal["standard", "adaptive"] = "standard",
        max_attempts: int = 5,
        invoke_read_timeout_s: float = 75,
        invoke_pool_size: int = 64,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_request: Callable[[AwsRequest], None] | None = None,
        lease_ttl_s: int = 600,
        mode: Literal["endpoint", "inference_component"] = "endpoint",
    ):
        if invoke_read_timeout_s < 70:
            # above SageMaker's 60 s invocation limit, so its own timeout error surfaces
            raise ValueError("invoke_read_timeout_s: at least 70 s")
        self.region = region
        self.role_arn = role_arn
        self.s3_uri = s3_uri
        self.credentials_block = credentials_block
        self.packaging = packaging
        self.vpc = vpc
        self._session = session
        self.poll_interval_s = poll_interval_s
        self.retry_mode = retry_mode
        self.max_attempts = max_attempts
        self.invoke_read_timeout_s = invoke_read_timeout_s
        self.invoke_pool_size = invoke_pool_size
        self._clock = clock
        self._sleep = sleep
        self.on_request = on_request
        self.lease_ttl_s = lease_ttl_s
        self.mode = mode

    # -- clients (lazy; tests wrap them in botocore Stubber) --

    @cached_property
    def session(self) -> Any:
        if self._session is not None:
            return self._session
        if self.credentials_block:
            from prefect_aws import AwsCredentials

            return AwsCredentials.load(self.credentials_block).get_boto3_session()
        import boto3

        return boto3.Session(region_name=self.region)

    def _control_config(self) -> Any:
        from botocore.config import Config

        return Config(
            region_name=self.region,
            retries={"mode": self.retry_mode, "total_max_attempts": self.max_attempts},
            user_agent_extra="lmiflow",
        )

    def client(self, service: str, config: Any = None) -> Any:
        """A boto3 client whose every request is checked against the service model."""
        c = self.session.client(service, config=config or self._control_config())
        return guard(c, self.on_request)

    @cached_property
    def sm(self) -> Any:
        return self.client("sagemaker")

    @cached_property
    def s3(self) -> Any:
        return self.client("s3")

    @cached_property
    def cloudwatch(self) -> Any:
        return self.client("cloudwatch")

    @cached_property
    def autoscaling(self) -> Any:
        return self.client("application-autoscaling")

    @cached_property
    def quotas(self) -> Any:
        return self.client("service-quotas")

    @cached_property
    def runtime(self) -> Any:
        from botocore.config import Config

        cfg = Config(
            region_name=self.region,
            retries={"mode": "standard", "total_max_attempts": 1},
            read_timeout=self.invoke_read_timeout_s,
            connect_timeout=10,
            user_agent_extra="lmiflow",
            # botocore's default pool holds 10: an 11th concurrent stream would wait for a
            # connection inside its measured latency.
            max_pool_connections=self.invoke_pool_size,
        )
        return self.client("sagemaker-runtime", cfg)

    def _client_for(self, service: str) -> Any:
        return {"sagemaker": self.sm, "s3": self.s3, "sagemaker-runtime": self.runtime,
                "cloudwatch": self.cloudwatch, "service-quotas": self.quotas,
                "application-autoscaling": self.autoscaling}[service]

    def send(self, req: AwsRequest) -> Any:
        """Validate the request, then send it with the client of its service."""
        validate(req)
        return getattr(self._client_for(req.service), method_name(req.operation))(**req.params)

    def _pages(self, req: AwsRequest) -> Iterator[dict]:
        validate(req)
        paginator = self._client_for(req.service).get_paginator(method_name(req.operation))
        return iter(paginator.paginate(**req.params))

    # -- before anything is created --

    def preflight(self, needs: Sequence[tuple[str, str]] = ()) -> list[str]:
        """Region, identity (STS) and permissions for `needs`; raises
        aws_preflight.AccessProblem, one line per failed check (see that module)."""
        from botocore.exceptions import BotoCoreError

        from lmiflow.targets.aws_preflight import AccessProblem, check_access

        try:
            session = self.session
        except (BotoCoreError, ValueError) as exc:  # AWS_PROFILE or credentials block missing
            what = "target.aws_credentials_block" if self.credentials_block else "AWS identity"
            raise AccessProblem([(what, str(exc).strip().splitlines()[0])]) from None
        access = check_access(session, self.region, needs, client=self.client)
        return [f"AWS identity: {access.arn} (account {access.account}, {self.region})",
                *access.notes]

    def deploy_needs(self, production: str, names: dict[str, str]) -> list[tuple[str, str]]:
        from lmiflow.targets.aws_preflight import deploy_needs

        return deploy_needs(production, names, self.role_arn, self.s3_uri)

    def autoscaling_needs(self, production: str) -> list[tuple[str, str]]:
        from lmiflow.targets.autoscaling_plan import IAM_ACTIONS

        return [(a, "*") for a in IAM_ACTIONS]

    # -- planning --

    def instance_catalog(self):
        """The SageMaker instance catalog (configs/instances.csv, with its sources)."""
        from lmiflow.sizing.catalog import load_catalog

        return load_catalog()

    def serving_model_id(self, model_id: str, local_dir: str | None) -> str:
        """The Hub id the container downloads (a local directory is staged into S3 instead:
        see weights.plan_weights, so it never gets here)."""
        return model_id

    def image_uri(self, backend: str, version: str | None, override: str | None) -> str:
        if override:
            return override
        framework = "djl-tensorrtllm" if backend == "trtllm" else "djl-lmi"
        return lmi_image_uri(self.region, version, framework)

    def serving_engine(self, backend: str) -> str:
        return backend  # the LMI container runs the backend the config names

    def endpoint_variant(self, instance_type: str, instance_count: int,
                         weights_bytes: int) -> EndpointVariant:
        """Download and start-up timeouts for a model of this size, and the volume where the
        instance takes one (instances with local NVMe storage reject VolumeSizeInGB)."""
        volume, download, startup = sizing_timeouts(weights_bytes)
        return EndpointVariant(
            instance_type=instance_type, instance_count=instance_count,
            volume_size_gb=volume if volume_size_supported(instance_type) else None,
            model_data_download_timeout_s=download,
            container_startup_health_check_timeout_s=startup,
        )

    def _shape(self, instance_type: str):
        from lmiflow.targets.components_plan import instance_shape

        cat = self.instance_catalog()
        rows = cat[cat["instance_type"] == instance_type].to_dict("records")
        if not rows:
            raise ValueError(f"{instance_type} is not in the instance catalog")
        return instance_shape(rows[0])

    def component_plan(self, section, endpoint, option, weights_bytes, variant, gated, alarms,
                       others=()):
        """Inference-component mode: the component, packed with `others` on the plan's
        instance type (targets/components_plan.py)."""
        if self.mode != "inference_component":
            return None
        from lmiflow.targets.components_plan import plan_component

        plan = plan_component(section, endpoint, option, weights_bytes,
                              self._shape(option.instance_type), variant, gated, alarms,
                              list(others))
        self.routes[endpoint] = plan.name  # production's invocations name its component
        return plan

    def models_in_use(self, endpoint: str) -> set[str]:
        """The models the endpoint's components serve (theirs, not its config's)."""
        out = set()
        for name in self.components_on(endpoint):
            d = self._component(name) or {}
            model = (d.get("Specification") or {}).get("ModelName")
            if model:
                out.add(model)
        return out

    def component_need(self, section, endpoint, option, weights_bytes):
        if self.mode != "inference_component":
            return None
        from lmiflow.targets.components_plan import component_need

        return component_need(section, endpoint, option, weights_bytes)

    # -- staging and creation --

    def package_plan(self, name: str, properties: str, weights: WeightsPlan | None = None
                     ) -> tuple[ModelPackage, str | None]:
        """(the package, the S3 folder serving.properties is uploaded to, if it is). Weights
        in S3 (staged or an s3:// model): the container gets that prefix as /opt/ml/model and
        the options as environment variables, since the prefix is shared by every config of
        the model. env packaging: options as environment variables, nothing uploaded. s3
        packaging: serving.properties in the model's own folder under s3_uri."""
        from lmiflow.serving.properties import parse, to_env

        if weights is not None and weights.container_loads_from_s3 and weights.prefix:
            return ModelPackage(model_data=weights.prefix, env=to_env(parse(properties))), None
        if self.packaging == "env":
            return ModelPackage(env=to_env(parse(properties))), None
        if not self.s3_uri:
            raise ValueError("target.s3_uri is required to stage files (or use packaging env)")
        files = staged_files_prefix(self.s3_uri, name)
        return ModelPackage(model_data=files), files

    def package(self, name: str, properties: str, weights: WeightsPlan | None = None
                ) -> ModelPackage:
        pkg, upload = self.package_plan(name, properties, weights)
        if upload:
            self.stage(name, {"serving.properties": properties})
        return pkg

    def stage(self, name: str, files: dict[str, str]) -> str:
        if not self.s3_uri:
            raise ValueError("target.s3_uri is required to stage files (or use packaging env)")
        check_name("model", name)
        if "serving.properties" not in files:
            raise ValueError("files: serving.properties is required")
        base = staged_files_prefix(self.s3_uri, name)
        for rel in files:  # all names checked before the first upload
            if not patterns.matches(patterns.REL_PATH, rel) or ".." in rel.split("/"):
                raise ValueError(f"file name {rel!r}: a relative path of letters, digits, _.-")
        for rel, text in files.items():
            self.send(put_object_request(base + rel, text.encode("utf-8"),
                                         "text/plain; charset=utf-8"))
        logger.info("staged %d file(s) at %s", len(files), base)
        return base

    def create_model(
        self, name: str, model_data: str, image_uri: str | None, env: dict[str, str],
        tags: dict[str, str], *, network_isolation: bool = False,
    ) -> None:
        if not self.role_arn:
            raise ValueError("target.role_arn is required to create a SageMaker model")
        req = create_model_request(name, self.role_arn, image_uri or lmi_image_uri(self.region),
                                   env, model_data, tags, network_isolation=network_isolation,
                                   vpc=self.vpc)
        try:
            self.send(req)
        except Exception as exc:
            if not _is_existing(exc):
                raise
            logger.info("model %s already exists: adopting it (same name, same spec hash)", name)
            return
        logger.info("created model %s (env keys: %s)", name, ", ".join(sorted(env)) or "none")

    def create_endpoint_config(
        self, name: str, model_name: str, variant: EndpointVariant, tags: dict[str, str],
        component: ComponentPlan | None = None,
    ) -> None:
        from lmiflow.targets.components_plan import endpoint_config_request

        req = (endpoint_config_request(name, component, self.role_arn or "", variant, tags)
               if component is not None
               else create_endpoint_config_request(name, model_name, variant, tags))
        try:
            self.send(req)
        except Exception as exc:
            if not _is_existing(exc):
                raise
            logger.info("endpoint config %s already exists: adopting it", name)
            return
        logger.info("created endpoint config %s (%s x%d)", name, variant.instance_type,
                    variant.instance_count)

    def create_endpoint(self, name: str, config_name: str, tags: dict[str, str]) -> None:
        try:
            self.send(create_endpoint_request(name, config_name, tags))
        except Exception as exc:
            if not _is_existing(exc):
                raise
            logger.info("endpoint %s already exists: adopting it", name)
            return
        logger.info("creating endpoint %s from %s", name, config_name)

    def update_endpoint(
        self, name: str, config_name: str, policy: TrafficPolicy | None = None, *,
        autoscaled: bool = False,
    ) -> None:
        """Blue/green update; refuses while the endpoint is busy so two runs never fight.
        autoscaled: the run scales production, so a scalable target on its variant is kept
        through the update where SageMaker allows it (targets.autoscaling_plan)."""
        current = self._describe(name)
        if current is None:
            raise LookupError(f"endpoint {name} does not exist: create it instead of updating")
        if current.status in BUSY_STATUSES:
            raise EndpointBusy(
                f"endpoint {name} is {current.status}: another deployment may be running; "
                "wait for it to finish (lmiflow never updates a busy endpoint)"
            )
        scaled = autoscaled and self._scalable_target(name) is not None
        if scaled and self._instance_type(current.config_name) != self._instance_type(
                config_name):
            # SageMaker refuses to change the instance type of a scalable variant
            self.remove_autoscaling(name)
        self.send(update_endpoint_request(name, config_name, policy or TrafficPolicy(),
                                          retain_count=scaled))
        logger.info("updating endpoint %s to %s (%s)", name, config_name,
                    (policy or TrafficPolicy()).type)

    # -- autoscaling (targets.autoscaling_plan) --

    def _scalable_target(self, name: str) -> dict | None:
        from lmiflow.targets.autoscaling_plan import describe_targets_request

        found = self.send(describe_targets_request(name, VARIANT_NAME))
        return next(iter(found.get("ScalableTargets") or []), None)

    def _instance_type(self, config_name: str | None) -> str | None:
        if not config_name:
            return None
        d = self.send(_request("sagemaker", "DescribeEndpointConfig",
                               EndpointConfigName=config_name))
        return next((v.get("InstanceType") for v in d.get("ProductionVariants") or []), None)

    def apply_autoscaling(self, endpoint: str, plan: ScalingPlan) -> list[str]:
        from lmiflow.targets.autoscaling_plan import (
            METRIC,
            put_policy_request,
            register_request,
            resource_id,
        )

        self.send(register_request(endpoint, VARIANT_NAME, plan))
        self.send(put_policy_request(endpoint, VARIANT_NAME, plan))
        logger.info("autoscaling %s: %d..%d instances, target %g concurrent requests per "
                    "instance", endpoint, plan.min_instances, plan.max_instances,
                    plan.target_per_instance)
        return [f"registered {resource_id(endpoint, VARIANT_NAME)} "
                f"({plan.min_instances}..{plan.max_instances} instances)",
                f"target tracking on {METRIC} at {plan.target_per_instance:g}"]

    def remove_autoscaling(self, endpoint: str) -> bool:
        from lmiflow.targets.autoscaling_plan import removal_requests

        try:
            found = self._scalable_target(endpoint)
        except Exception as exc:
            if "AccessDenied" not in _error(exc)[0]:
                raise
            # a caller that never set up scaling may not look: DeleteEndpoint deregisters
            # what it can (SageMaker developer guide, endpoint-delete-with-scaling.html)
            logger.warning("autoscaling of %s not checked: %s", endpoint, _error(exc)[1])
            return False
        if found is None:
            return False
        for req in removal_requests(endpoint, VARIANT_NAME):
            try:
                self.send(req)
            except Exception as exc:
                if _error(exc)[0] != "ObjectNotFoundException":
                    raise
        logger.info("autoscaling of %s removed", endpoint)
        return True

    # -- model weights --

    def read_s3_model(self, uri: str) -> tuple[ModelSource, dict, int | None]:
        return s3_source(self.s3, uri)

    def stage_weights(self, weights: WeightsPlan, token: SecretStr | None,
                      on_progress: Callable[[Progress], None] | None = None
                      ) -> StagingReport | None:
        if weights.delivery != "staged" or not weights.prefix:
            return None
        from lmiflow.targets.staging import stage

        return stage(self.s3, weights.source, weights.prefix, token=token,
                     on_progress=on_progress)

    # -- the run's requests and the permissions they need --

    def planned_requests(self, run: PlannedRun) -> list[AwsRequest]:
        from lmiflow.targets.sagemaker_plan import deploy_requests

        return deploy_requests(self, run)

    def iam_policies(self, requests: list[AwsRequest]) -> tuple[dict, dict] | None:
        if not self.role_arn:
            return None
        from lmiflow.targets.iam import execution_role_policy, runner_policy

        return (runner_policy(requests, self.region, self.role_arn),
                execution_role_policy(requests, self.region, self.role_arn))

    def endpoint_arn(self, name: str) -> str:
        """The endpoint's ARN as SageMaker writes it (lower case), in the execution role's
        account: what a dry run shows without asking AWS."""
        from lmiflow.targets.iam import account_of

        partition, account = account_of(self.role_arn or "arn:aws:iam::000000000000:role/x")
        return f"arn:{partition}:sagemaker:{self.region}:{account}:endpoint/{name.lower()}"

    # -- status --

    def _describe_raw(self, name: str) -> dict | None:
        try:
            return self.send(_request("sagemaker", "DescribeEndpoint", EndpointName=name))
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise

    def _describe(self, name: str) -> EndpointStatus | None:
        d = self._describe_raw(name)
        if d is None:
            return None
        return EndpointStatus(
            name=d["EndpointName"],
            status=d["EndpointStatus"],
            failure_reason=d.get("FailureReason"),
            config_name=d.get("EndpointConfigName"),
            since=d.get("LastModifiedTime"),
            pending_config_name=(d.get("PendingDeploymentSummary") or {}).get(
                "EndpointConfigName"),
        )

    def describe(self, name: str) -> EndpointStatus | None:
        """Status with the endpoint's tags (one more call: list_tags)."""
        d = self._describe_raw(name)
        if d is None:
            return None
        tags: dict[str, str] = {}
        for page in self._pages(_request("sagemaker", "ListTags",
                                         ResourceArn=d["EndpointArn"])):
            tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
        return EndpointStatus(
            name=d["EndpointName"],
            status=d["EndpointStatus"],
            failure_reason=d.get("FailureReason"),
            config_name=d.get("EndpointConfigName"),
            pending_config_name=(d.get("PendingDeploymentSummary") or {}).get(
                "EndpointConfigName"),
            tags=tags,
        )

    def poll(self, name: str) -> EndpointStatus | None:
        return self._describe(name)  # no tags: one call per poll

    # -- invocation --

    def _route(self, name: str) -> dict[str, str]:
        component = self.routes.get(name)
        return {"InferenceComponentName": component} if component else {}

    def invoke(self, name: str, payload: dict, timeout_s: float | None = None) -> bytes:
        resp = self.send(_request(
            "sagemaker-runtime", "InvokeEndpoint", EndpointName=name,
            ContentType="application/json", Accept="application/json",
            Body=json.dumps(payload).encode("utf-8"), **self._route(name)))
        return resp["Body"].read()

    def invoke_stream(self, name: str, payload: dict, timeout_s: float | None = None
                      ) -> Iterator[bytes]:
        body = dict(payload)
        body.setdefault("stream", True)
        resp = self.send(_request(
            "sagemaker-runtime", "InvokeEndpointWithResponseStream", EndpointName=name,
            ContentType="application/json", Accept="application/jsonlines",
            Body=json.dumps(body).encode("utf-8"), **self._route(name)))
        return iter_json_lines(_payload_parts(resp["Body"]))

    def reserve_invocations(self, concurrency: int) -> None:
        """Grow the runtime client's connection pool to hold `concurrency` streams (a new
        client when the pool is too small; urllib3 cannot resize one)."""
        if concurrency > self.invoke_pool_size:
            self.invoke_pool_size = concurrency
            self.__dict__.pop("runtime", None)

    def model_files(self, endpoint: str, dest: Path, names: Sequence[str]) -> ModelFiles | None:
        """The model's serving.properties from its S3 prefix (for env packaging: the few
        OPTION_* entries that say which model and how long a context, never a secret), and
        those of `names` found in the prefix or an s3:// option.model_id, copied into dest."""
        from lmiflow.serving.properties_text import parse_entries

        d = self._describe_raw(endpoint)
        model_name = self.config_model_name(d["EndpointConfigName"]) if d else None
        if model_name is None:
            return None
        container = self.send(_request("sagemaker", "DescribeModel", ModelName=model_name)
                              ).get("PrimaryContainer", {})
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        prefix = container.get("ModelDataSource", {}).get("S3DataSource", {}).get("S3Uri")
        if prefix:
            self._copy_s3_files(prefix, ["serving.properties", *names], dest)
        props = dest / "serving.properties"
        if props.is_file():
            entries = parse_entries(props.read_text())
            props.unlink()  # the entries travel as data; the file may hold a secret
        else:
            env = container.get("Environment") or {}
            keep = ("OPTION_MODEL_ID", "OPTION_MAX_MODEL_LEN", "OPTION_REVISION")
            entries = {"option." + k[len("OPTION_"):].lower(): v for k, v in env.items()
                       if k in keep}
            if env.get("HF_MODEL_ID"):
                entries.setdefault("option.model_id", env["HF_MODEL_ID"])
        model_id = entries.get("option.model_id", "")
        if model_id.startswith("s3://"):
            self._copy_s3_files(model_id if model_id.endswith("/") else model_id + "/",
                                list(names), dest)
        return ModelFiles(directory=dest, properties=entries)

    def _copy_s3_files(self, prefix: str, names: Sequence[str], dest: Path) -> None:
        bucket, key_prefix = _split_s3(prefix)
        for name in names:
            try:
                body = self.send(_request("s3", "GetObject", Bucket=bucket,
                                          Key=key_prefix + name))["Body"].read()
            except Exception as exc:
                if _error(exc)[0] in ("NoSuchKey", "404", "NotFound", "AccessDenied"):
                    continue
                raise
            (dest / name).write_bytes(body)

    # -- deletion and listing --

    def _delete(self, what: str, req: AwsRequest, name: str) -> bool:
        try:
            self.send(req)
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise
        logger.info("deleted %s %s", what, name)
        return True

    def delete_endpoint(self, name: str) -> bool:
        """In component mode its components go first: SageMaker deletes no endpoint that
        still has some."""
        for component in self.components_on(name):
            self.delete_component(component)
        return self._delete("endpoint", _request("sagemaker", "DeleteEndpoint",
                                                 EndpointName=name), name)

    def delete_endpoint_config(self, name: str) -> bool:
        return self._delete("endpoint config", _request(
            "sagemaker", "DeleteEndpointConfig", EndpointConfigName=name), name)

    def delete_model(self, name: str) -> bool:
        return self._delete("model", _request("sagemaker", "DeleteModel", ModelName=name), name)

    def config_model_name(self, config_name: str) -> str | None:
        try:
            d = self.send(_request("sagemaker", "DescribeEndpointConfig",
                                   EndpointConfigName=config_name))
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise
        variants = d.get("ProductionVariants") or []
        return variants[0].get("ModelName") if variants else None

    def production_fleet(self, name: str) -> dict[str, int]:
        """Instances per type the endpoint runs now ({} when it does not exist): the blue fleet
        a blue/green update runs next to. Types come from its endpoint config, counts from the
        endpoint (auto scaling may have moved them from the config's initial count)."""
        current = self._describe_raw(name)
        if current is None or not current.get("EndpointConfigName"):
            return {}
        counts = {v["VariantName"]: v.get("CurrentInstanceCount")
                  for v in current.get("ProductionVariants") or []}
        config = self.send(_request("sagemaker", "DescribeEndpointConfig",
                                    EndpointConfigName=current["EndpointConfigName"]))
        fleet: dict[str, int] = {}
        for v in config.get("ProductionVariants") or []:
            if "InstanceType" not in v:
                continue  # serverless variants hold no instances
            n = counts.get(v["VariantName"])
            n = v.get("InitialInstanceCount", 0) if n is None else n
            fleet[v["InstanceType"]] = fleet.get(v["InstanceType"], 0) + int(n)
        return fleet

    def missing_alarms(self, names: list[str]) -> list[str]:
        """The CloudWatch alarms among `names` that do not exist: SageMaker would take a
        misspelt rollback alarm as "never fires" and roll nothing back."""
        if not names:
            return []
        found: set[str] = set()
        pages = self._pages(describe_alarms_request(names))
        for page in pages:
            for kind in ("MetricAlarms", "CompositeAlarms"):
                found.update(a["AlarmName"] for a in page.get(kind, []))
        return [n for n in names if n not in found]

    def endpoint_quotas(self, instance_types: list[str]) -> dict[str, float | None]:
        """The account's "ml.<type> for endpoint usage" quota per instance type (Service
        Quotas, applied values); None where the account lists no such quota."""
        from lmiflow.targets.blue_green import QUOTA_NAME, QUOTA_SERVICE_CODE

        wanted = {QUOTA_NAME.format(instance_type=t): t for t in instance_types}
        out: dict[str, float | None] = dict.fromkeys(instance_types)
        pages = self._pages(_request("service-quotas", "ListServiceQuotas",
                                     ServiceCode=QUOTA_SERVICE_CODE))
        for page in pages:
            for q in page.get("Quotas", []):
                t = wanted.get(q.get("QuotaName", ""))
                if t is not None:
                    out[t] = float(q["Value"])
        return out

    def endpoint_lock(self, name: str, run_id: str | None = None) -> EndpointLock:
        """A lease in the S3 prefix (targets.s3_lease), so it holds across machines. Without an
        S3 prefix there is nothing shared to hold it in, and only update_endpoint's refusal of
        a busy endpoint protects production."""
        from lmiflow.targets.s3_lease import S3Lease

        check_name("endpoint", name)
        if not self.s3_uri:
            logger.warning("no target.s3_uri: endpoint %s is not locked across machines", name)
            return EndpointLock()
        bucket, prefix = _split_s3(self.s3_uri)
        return S3Lease(self.send, bucket, lease_key(prefix, name), name, self.lease_ttl_s,
                       run_id)

    # -- production's baseline: s3_uri/<endpoint>/baseline.json --

    def baseline_location(self, endpoint: str) -> tuple[str, str]:
        """(bucket, key) of production's baseline: s3_uri/<endpoint>/baseline.json."""
        check_name("endpoint", endpoint)
        bucket, prefix = _split_s3(self.s3_uri or "")
        return bucket, f"{prefix}{endpoint}/{BASELINE_FILE}"

    def load_baseline(self, endpoint: str) -> dict | None:
        if not self.s3_uri:
            return None
        bucket, key = self.baseline_location(endpoint)
        try:
            body = self.send(_request("s3", "GetObject", Bucket=bucket, Key=key))["Body"].read()
        except Exception as exc:
            if _error(exc)[0] in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return json.loads(body)

    def save_baseline(self, endpoint: str, data: dict) -> str | None:
        if not self.s3_uri:
            return None
        bucket, key = self.baseline_location(endpoint)
        self.send(put_object_request(f"s3://{bucket}/{key}", json.dumps(
            data, indent=2, sort_keys=True).encode(), "application/json"))
        return f"s3://{bucket}/{key}"

    # -- the latency model's calibration store: s3_uri/calibration.json --

    def calibration_location(self) -> tuple[str, str]:
        """(bucket, key) of the calibration store every run of this S3 prefix shares."""
        bucket, prefix = _split_s3(self.s3_uri or "")
        return bucket, f"{prefix}{CALIBRATION_FILE}"

    def calibration_uri(self) -> str | None:
        return "s3://{}/{}".format(*self.calibration_location()) if self.s3_uri else None

    def load_calibration(self, *, offline: bool = False) -> dict | None:
        if not self.s3_uri:
            return None
        bucket, key = self.calibration_location()
        if offline:
            raise StoreOffline(f"s3://{bucket}/{key} is read when the deploy plans, not by a "
                               "dry run (it calls no AWS service)")
        return s3_store.read(self.send, bucket, key)[0]

    def update_calibration(self, change: Callable[[dict | None], dict]) -> str | None:
        if not self.s3_uri:
            return None
        bucket, key = self.calibration_location()
        s3_store.update(self.send, bucket, key, change)
        return self.calibration_uri()

    # ---- the run's report -----------------------------------------------------------------

    def report_folder(self, endpoint: str, run: str) -> tuple[str, str]:
        """(bucket, key prefix ending in /) of a run's report: <prefix><endpoint>/reports/<run>/
        next to the baseline; run is the candidate's name, so a rerun of the same spec
        replaces its report and each candidate keeps its own."""
        bucket, prefix = _split_s3(self.s3_uri)
        return bucket, f"{prefix}{endpoint}/reports/{run}/"

    def store_report(self, endpoint: str, run: str, files: dict[str, bytes]) -> StoredReport | None:
        """The report files in the S3 prefix, so a remote worker's report outlives it; the
        link opens report.html in the S3 console."""
        if not self.s3_uri:
            return None
        bucket, folder = self.report_folder(endpoint, run)
        types = {"html": "text/html; charset=utf-8", "json": "application/json",
                 "md": "text/markdown; charset=utf-8"}
        for name, body in files.items():
            self.send(put_object_request(f"s3://{bucket}/{folder}{name}", body,
                                         types.get(name.rsplit(".", 1)[-1], "text/plain")))
        key = folder + "report.html"
        return StoredReport(
            location=f"s3://{bucket}/{key}",
            url=f"https://{self.region}.console.aws.amazon.com/s3/object/{bucket}?"
                + urlencode({"region": self.region, "prefix": key}))

    def list_endpoints(self) -> list[EndpointStatus]:
        out = []
        for page in self._pages(_request("sagemaker", "ListEndpoints")):
            for e in page.get("Endpoints", []):
                out.append(EndpointStatus(name=e["EndpointName"], status=e["EndpointStatus"]))
        return out

    def list_resources(self, prefix: str) -> dict[str, list[str]]:
        def names(op: str, key: str, field: str) -> list[str]:
            found = []
            for page in self._pages(_request("sagemaker", op, NameContains=prefix)):
                found += [r[field] for r in page.get(key, []) if r[field].startswith(prefix)]
            return sorted(found)

        return {
            "models": names("ListModels", "Models", "ModelName"),
            "endpoint_configs": names(
                "ListEndpointConfigs", "EndpointConfigs", "EndpointConfigName"
            ),
            "endpoints": names("ListEndpoints", "Endpoints", "EndpointName"),
        }

def _bounded(field: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise ValueError(f"{field}: {value} is outside the API's bounds {lo}-{hi}")
    return value


def _payload_parts(events: Iterable[dict]) -> Iterator[bytes]:
    """PayloadPart bytes from a response stream. botocore raises error events (ModelStreamError,
    InternalStreamFailure) as EventStreamError; they become StreamError here."""
    it = iter(events)
    while True:
        try:
            event = next(it)
        except StopIteration:
            return
        except Exception as exc:
            code, msg = _error(exc)
            if code in ("ModelStreamError", "InternalStreamFailure"):
                raise StreamError(code, msg) from exc
            raise
        if "PayloadPart" in event:
            yield event["PayloadPart"].get("Bytes", b"")
        elif "ModelStreamError" in event:
            e = event["ModelStreamError"]
            raise StreamError("ModelStreamError", e.get("Message", ""), e.get("ErrorCode"))
        elif "InternalStreamFailure" in event:
            raise StreamError("InternalStreamFailure",
                              event["InternalStreamFailure"].get("Message", ""))
