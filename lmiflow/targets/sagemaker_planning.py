"""SageMakerTarget's planning and its questions before anything is created (a mixin of
targets.sagemaker): the instance catalog, image and variant for a plan, inference-component
plans, the run's planned requests and their IAM policies, the preflight (credentials,
permissions), production's fleet, rollback alarms and endpoint quotas."""

from __future__ import annotations

from collections.abc import Sequence

from lmiflow.targets.aws_requests import AwsRequest, request
from lmiflow.targets.base import EndpointVariant
from lmiflow.targets.sagemaker_requests import (
    describe_alarms_request,
    lmi_image_uri,
    sizing_timeouts,
    volume_size_supported,
)


class PlanningOps:
    """Planning and preflight for SageMakerTarget (which holds the clients and send)."""

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

    def access_needs(self, requests: Sequence[AwsRequest]) -> list[tuple]:
        """Every permission the requests need, on exactly the resources they name, with the
        context IAM's conditions read (targets.iam: the policy is written from the same)."""
        if not self.role_arn:
            return []
        from lmiflow.targets.iam import needed

        return needed(list(requests), self.region, self.role_arn, general=False)

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
                       others=(), concurrency=None):
        """Inference-component mode: the component, packed with `others` on the plan's
        instance type (targets/components_plan.py)."""
        if self.mode != "inference_component":
            return None
        from lmiflow.targets.components_plan import plan_component

        plan = plan_component(section, endpoint, option, weights_bytes,
                              self._shape(option.instance_type), variant, gated, alarms,
                              list(others), concurrency)
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

    # -- the run's requests and the permissions they need --

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

    def production_fleet(self, name: str) -> dict[str, int]:
        """Instances per type the endpoint runs now ({} when it does not exist): the blue fleet
        a blue/green update runs next to. Types come from its endpoint config, counts from the
        endpoint (auto scaling may have moved them from the config's initial count)."""
        current = self._describe_raw(name)
        if current is None or not current.get("EndpointConfigName"):
            return {}
        counts = {v["VariantName"]: v.get("CurrentInstanceCount")
                  for v in current.get("ProductionVariants") or []}
        config = self.send(request("sagemaker", "DescribeEndpointConfig",
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
        pages = self._pages(request("service-quotas", "ListServiceQuotas",
                                     ServiceCode=QUOTA_SERVICE_CODE))
        for page in pages:
            for q in page.get("Quotas", []):
                t = wanted.get(q.get("QuotaName", ""))
                if t is not None:
                    out[t] = float(q["Value"])
        return out
