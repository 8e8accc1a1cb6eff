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
import time
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from lmiflow import patterns
from lmiflow.targets.aws_requests import (
    AwsRequest,
    guard,
    is_existing,
    is_missing,
    method_name,
    request,
    validate,
)
from lmiflow.targets.base import (
    EndpointBusy,
    EndpointStatus,
    EndpointVariant,
    ModelPackage,
    Target,
    TrafficPolicy,
    check_name,
)
from lmiflow.targets.sagemaker_components import ComponentOps
from lmiflow.targets.sagemaker_delete import StagedFilesOps
from lmiflow.targets.sagemaker_planning import PlanningOps
from lmiflow.targets.sagemaker_requests import (
    create_endpoint_config_request,
    create_endpoint_request,
    create_model_request,
    lmi_image_uri,
    put_object_request,
    staged_files_prefix,
    update_endpoint_request,
)
from lmiflow.targets.sagemaker_s3 import S3Storage
from lmiflow.targets.sagemaker_scaling import ScalingOps
from lmiflow.targets.sagemaker_stream import iter_json_lines, payload_parts
from lmiflow.targets.weights import ModelSource, WeightsPlan, s3_source

if TYPE_CHECKING:
    from pydantic import SecretStr

    from lmiflow.targets.components_plan import ComponentPlan
    from lmiflow.targets.staging import Progress, StagingReport

logger = logging.getLogger(__name__)

BUSY_STATUSES = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")


# ---- pure helpers ---------------------------------------------------------------------------


# ---- the target -----------------------------------------------------------------------------


class SageMakerTarget(ComponentOps, S3Storage, StagedFilesOps, ScalingOps, PlanningOps,
                     Target):
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
        """Validate the request, then send it with the client of its service. An S3 403
        becomes a permission error naming the action and the object (iam.s3_denied), so a
        denied read of the baseline, the calibration store or the lease is never taken for
        "not there yet"."""
        from lmiflow.targets.iam import s3_denied

        validate(req)
        try:
            return getattr(self._client_for(req.service), method_name(req.operation))(
                **req.params)
        except Exception as exc:
            denied = s3_denied(req, exc)
            if denied is not None:
                raise denied from None
            raise

    def _pages(self, req: AwsRequest) -> Iterator[dict]:
        validate(req)
        paginator = self._client_for(req.service).get_paginator(method_name(req.operation))
        return iter(paginator.paginate(**req.params))

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
            if not is_existing(exc):
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
            if not is_existing(exc):
                raise
            logger.info("endpoint config %s already exists: adopting it", name)
            return
        logger.info("created endpoint config %s (%s x%d)", name, variant.instance_type,
                    variant.instance_count)

    def create_endpoint(self, name: str, config_name: str, tags: dict[str, str]) -> None:
        try:
            self.send(create_endpoint_request(name, config_name, tags))
        except Exception as exc:
            if not is_existing(exc):
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

    # -- model weights --

    def read_s3_model(self, uri: str) -> tuple[ModelSource, dict, int | None]:
        from lmiflow.targets.iam import s3_denied_under

        with s3_denied_under(uri):  # boto3's own calls: a 403 names what is missing too
            return s3_source(self.s3, uri)

    def stage_weights(self, weights: WeightsPlan, token: SecretStr | None,
                      on_progress: Callable[[Progress], None] | None = None
                      ) -> StagingReport | None:
        if weights.delivery != "staged" or not weights.prefix:
            return None
        from lmiflow.targets.iam import s3_denied_under
        from lmiflow.targets.staging import stage

        with s3_denied_under(weights.prefix):
            return stage(self.s3, weights.source, weights.prefix, token=token,
                         on_progress=on_progress)

    # -- status --

    def _describe_raw(self, name: str) -> dict | None:
        try:
            return self.send(request("sagemaker", "DescribeEndpoint", EndpointName=name))
        except Exception as exc:
            if is_missing(exc):
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
        for page in self._pages(request("sagemaker", "ListTags",
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
        resp = self.send(request(
            "sagemaker-runtime", "InvokeEndpoint", EndpointName=name,
            ContentType="application/json", Accept="application/json",
            Body=json.dumps(payload).encode("utf-8"), **self._route(name)))
        return resp["Body"].read()

    def invoke_stream(self, name: str, payload: dict, timeout_s: float | None = None
                      ) -> Iterator[bytes]:
        body = dict(payload)
        body.setdefault("stream", True)
        resp = self.send(request(
            "sagemaker-runtime", "InvokeEndpointWithResponseStream", EndpointName=name,
            ContentType="application/json", Accept="application/jsonlines",
            Body=json.dumps(body).encode("utf-8"), **self._route(name)))
        return iter_json_lines(payload_parts(resp["Body"]))

    def reserve_invocations(self, concurrency: int) -> None:
        """Grow the runtime client's connection pool to hold `concurrency` streams (a new
        client when the pool is too small; urllib3 cannot resize one)."""
        if concurrency > self.invoke_pool_size:
            self.invoke_pool_size = concurrency
            self.__dict__.pop("runtime", None)

    # -- deletion and listing --

    def _delete(self, what: str, req: AwsRequest, name: str) -> bool:
        try:
            self.send(req)
        except Exception as exc:
            if is_missing(exc):
                return False
            raise
        logger.info("deleted %s %s", what, name)
        return True

    def delete_endpoint(self, name: str) -> bool:
        """In component mode its components go first: SageMaker deletes no endpoint that
        still has some."""
        for component in self.components_on(name):
            self.delete_component(component)
        return self._delete("endpoint", request("sagemaker", "DeleteEndpoint",
                                                 EndpointName=name), name)

    def delete_endpoint_config(self, name: str) -> bool:
        return self._delete("endpoint config", request(
            "sagemaker", "DeleteEndpointConfig", EndpointConfigName=name), name)

    def delete_model(self, name: str) -> bool:
        return self._delete("model", request("sagemaker", "DeleteModel", ModelName=name), name)

    def config_model_name(self, config_name: str) -> str | None:
        try:
            d = self.send(request("sagemaker", "DescribeEndpointConfig",
                                   EndpointConfigName=config_name))
        except Exception as exc:
            if is_missing(exc):
                return None
            raise
        variants = d.get("ProductionVariants") or []
        return variants[0].get("ModelName") if variants else None

    def list_endpoints(self) -> list[EndpointStatus]:
        out = []
        for page in self._pages(request("sagemaker", "ListEndpoints")):
            for e in page.get("Endpoints", []):
                out.append(EndpointStatus(name=e["EndpointName"], status=e["EndpointStatus"]))
        return out

    def list_resources(self, prefix: str) -> dict[str, list[str]]:
        def names(op: str, key: str, field: str) -> list[str]:
            found = []
            for page in self._pages(request("sagemaker", op, NameContains=prefix)):
                found += [r[field] for r in page.get(key, []) if r[field].startswith(prefix)]
            return sorted(found)

        return {
            "models": names("ListModels", "Models", "ModelName"),
            "endpoint_configs": names(
                "ListEndpointConfigs", "EndpointConfigs", "EndpointConfigName"
            ),
            "endpoints": names("ListEndpoints", "Endpoints", "EndpointName"),
        }
