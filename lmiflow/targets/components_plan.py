"""Inference-component mode on SageMaker: what the component is (its resources, copies and
scaling, from the plan) and every request that creates, updates, scales and removes it, built
as data like the endpoint-mode requests (the target sends them; a dry run records them).

Why components: the endpoint's instances are managed by SageMaker (ManagedInstanceScaling)
and each model reserves only what one copy needs, so several models share instances and a
model can scale its copies, down to zero, independently of the others. The facts used here
are botocore's sagemaker and application-autoscaling models and the Developer Guide's
"Scale an endpoint to zero instances" (endpoint-auto-scaling-zero-instances.html): an
endpoint scales to zero only with inference components and MinInstanceCount 0, and a copy
count at zero is brought back by a step-scaling policy on the NoCapacityInvocationFailures
alarm, since target tracking has no per-copy metric to track while no copy exists.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lmiflow import patterns
from lmiflow.errors import UserInputError
from lmiflow.sizing.autoscaling import (
    DEFAULT_HEADROOM_PCT,
    auto_target,
    ceiling_per_copy,
    copy_batch,
)
from lmiflow.sizing.packing import (
    ComponentNeed,
    DoesNotFit,
    InstanceShape,
    Packing,
    memory_mb,
    pack,
)
from lmiflow.targets.aws_requests import AwsRequest

VARIANT_NAME = "AllTraffic"
COPY_DIMENSION = "sagemaker:inference-component:DesiredCopyCount"
COPY_METRIC = "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution"
# What a request gets when the endpoint has no copy of the component to send it to.
NO_CAPACITY_METRIC = "NoCapacityInvocationFailures"
# Room for the candidate's suffix (-ic-<hash>) within SageMaker's 63 characters.
MAX_COMPONENT_NAME = 50


class ComponentResources(BaseModel):
    """ComputeResourceRequirements of one copy."""

    accelerators: int = Field(description="NumberOfAcceleratorDevicesRequired: the plan's "
                                          "tensor-parallel degree.")
    memory_mb: int = Field(description="MinMemoryRequiredInMb: host memory for one copy's "
                                       "weights (the sizing's weights, MiB rounded up).")
    cpu_cores: float = Field(description="NumberOfCpuCoresRequired.")


class CopyScaling(BaseModel):
    """Application Auto Scaling on the component's copies."""

    min_copies: int
    max_copies: int
    target_per_copy: int = Field(description="Concurrent requests per copy the target-tracking "
                                             "policy holds: the copy's ceiling less headroom.")
    ceiling_per_copy: int = Field(default=0, description="The most one copy holds without "
                                  "queueing: its batch, within memory and the latency limits.")
    headroom_pct: float = Field(default=DEFAULT_HEADROOM_PCT)
    why: str
    scale_in_cooldown_s: int
    scale_out_cooldown_s: int


class ComponentPlan(BaseModel):
    """One model as an inference component, decided before anything exists."""

    name: str = Field(description="The production component.")
    candidate: str = Field(description="The candidate's component, on the candidate endpoint.")
    endpoint: str = Field(description="The production endpoint the component joins.")
    instance_type: str
    resources: ComponentResources
    copies: int = Field(description="CopyCount it is created with.")
    batch_per_copy: int = Field(
        default=0, description="option.max_rolling_batch_size of one copy (one DJL worker on "
        "its own accelerators): workload.concurrency over the copies it starts with.")
    scaling: CopyScaling
    min_instances: int = Field(description="ManagedInstanceScaling.MinInstanceCount.")
    max_instances: int = Field(description="ManagedInstanceScaling.MaxInstanceCount.")
    initial_instances: int = Field(description="InitialInstanceCount: what the copies need.")
    packing: Packing = Field(description="Every component of the endpoint (this one and those "
                                         "named alongside it), at their largest copy counts.")
    alongside: list[str] = Field(default_factory=list,
                                 description="Other components planned on the same endpoint.")
    startup_timeouts_s: tuple[int | None, int | None] = Field(
        default=(None, None), description="ModelDataDownloadTimeoutInSeconds and "
        "ContainerStartupHealthCheckTimeoutInSeconds.")
    rollback_alarms: list[str] = Field(default_factory=list)
    cold_start_s: float | None = Field(
        default=None, description="After a run: instance start plus model load, from its "
        "create_endpoint step (what a first request after scale-to-zero waits).")

    @property
    def scales_to_zero(self) -> bool:
        return self.scaling.min_copies == 0

    def named(self, spec_hash: str) -> ComponentPlan:
        """With its candidate's name: <component>-ic-<hash>, the hash of the candidate's other
        resources, so a rerun of the same spec finds what an interrupted run made."""
        h = spec_hash.lower()[:8]
        return self.model_copy(update={
            "candidate": f"{self.name[:63 - 12].rstrip('-')}-ic-{h}"})


class InferenceComponentSection(BaseModel):
    """The config's `inference_component` section (read with target.mode
    inference_component). Defined here, beside what it decides, like the other target facts
    the config checks."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    name: str | None = Field(
        default=None, description="The component's name, unique on the endpoint (several "
        "configs naming the same endpoint each add one); empty: the endpoint's name.")
    copies: int | None = Field(
        default=None, ge=1, le=100, description="Copies of the model the component starts "
        "with; empty: as many as the plan needs for workload.concurrency.")
    min_copies: int = Field(
        default=1, ge=0, le=100,
        description="Fewest copies auto scaling keeps; 0 scales the model to zero when idle "
        "(the first request after that waits for an instance and the model to load).")
    max_copies: int | None = Field(
        default=None, ge=1, le=100, description="Most copies auto scaling adds; empty: copies.")
    min_instances: int = Field(
        default=1, ge=0, le=100,
        description="ManagedInstanceScaling.MinInstanceCount; 0 lets the endpoint release "
        "every instance once no copy is left (needs min_copies 0).")
    max_instances: int | None = Field(
        default=None, ge=1, le=100,
        description="ManagedInstanceScaling.MaxInstanceCount; empty: what the copies need.")
    cpu_cores: float | None = Field(
        default=None, ge=0.25, le=512,
        description="CPU cores each copy reserves; empty: one per accelerator it uses.")
    scale_in_cooldown_s: int = Field(default=300, ge=0, le=86400,
                                     description="Copies: seconds between removals.")
    scale_out_cooldown_s: int = Field(default=60, ge=0, le=86400,
                                      description="Copies: seconds between additions.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (not patterns.matches(patterns.NAME, v)
                              or len(v) > MAX_COMPONENT_NAME):
            raise ValueError(f"must match {patterns.NAME.pattern} and be at most "
                             f"{MAX_COMPONENT_NAME} characters")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> InferenceComponentSection:
        top = self.max_copies if self.max_copies is not None else self.copies
        if top is not None and self.min_copies > top:
            raise UserInputError("min_copies", f"{self.min_copies} is above max_copies {top}")
        if self.copies is not None and self.max_copies is not None \
                and self.copies > self.max_copies:
            raise UserInputError("copies", f"{self.copies} is above max_copies "
                                           f"{self.max_copies}")
        if self.max_instances is not None and self.min_instances > self.max_instances:
            raise UserInputError("min_instances", f"{self.min_instances} is above "
                                 f"max_instances {self.max_instances}")
        if self.min_instances == 0 and self.min_copies > 0:
            raise UserInputError("min_instances", "0 needs min_copies 0: an instance stays "
                                 "while any copy does")
        return self


# ---- the plan -------------------------------------------------------------------------------


def instance_shape(row: dict) -> InstanceShape:
    """What one instance of a catalog row (sizing.catalog) offers components."""
    return InstanceShape(instance_type=str(row["instance_type"]),
                         accelerators=int(row["accelerator_count"]),
                         memory_mb=int(float(row["host_memory_gib"]) * 1024),
                         cpu_cores=float(row["vcpu"]))


def component_name(section: InferenceComponentSection, endpoint: str) -> str:
    return section.name or endpoint


def component_need(section: InferenceComponentSection, endpoint: str, option: Any,
                   weights_bytes: float) -> ComponentNeed:
    """One copy's reservation, at the most copies the component may scale to. option: the
    plan's chosen sizing.planner.Option."""
    tp = int(option.tensor_parallel_degree)
    copies = section.copies or option.model_copies * option.instance_count
    return ComponentNeed(name=component_name(section, endpoint), accelerators=tp,
                         memory_mb=memory_mb(weights_bytes),
                         cpu_cores=section.cpu_cores if section.cpu_cores is not None
                         else float(tp),
                         copies=max(section.max_copies or copies, copies))


def copy_sizing(section: InferenceComponentSection, option: Any, concurrency: int | None,
                gated: bool) -> tuple[int, CopyScaling]:
    """(batch per copy, copy scaling): what one copy runs and what its scaling tracks, from
    the copy itself. A copy is one DJL worker on its own accelerators (not a slice of the
    plan's instance), so its batch is the workload over the copies the component starts with,
    and its target is that batch, capped by what the plan says one copy holds, less the same
    headroom endpoint mode keeps (sizing.autoscaling). concurrency None: the plan's batch."""
    copies = section.copies or option.model_copies * option.instance_count
    held = int(option.max_concurrency_per_copy)
    if held < 1:
        raise UserInputError("plan", "the plan gives no per-copy concurrency to scale on")
    batch = (int(option.concurrency_per_copy) if concurrency is None
             else copy_batch(concurrency, copies))
    if batch > held:
        need = -(-int(concurrency or batch) // held)
        raise UserInputError("inference_component.copies",
                             f"{copies} cop{'y' if copies == 1 else 'ies'} would run {batch} "
                             f"requests each for workload.concurrency {concurrency}; one copy "
                             f"holds {held} ({'memory and latency gates' if gated else 'memory'})"
                             f": start with at least {need}")
    ceiling = ceiling_per_copy(held, batch)
    target = auto_target(ceiling, DEFAULT_HEADROOM_PCT)
    bound = "memory and the latency gates" if gated else "memory (no latency gate bounds it)"
    why = (f"a copy runs a batch of {batch} and holds {held} within {bound}: ceiling "
           f"{ceiling}, less {DEFAULT_HEADROOM_PCT:g} % headroom")
    most = max(section.max_copies or copies, copies)
    return batch, CopyScaling(min_copies=section.min_copies, max_copies=most,
                              target_per_copy=target, ceiling_per_copy=ceiling, why=why,
                              scale_in_cooldown_s=section.scale_in_cooldown_s,
                              scale_out_cooldown_s=section.scale_out_cooldown_s)


def plan_component(section: InferenceComponentSection, endpoint: str, option: Any,
                   weights_bytes: float, shape: InstanceShape, variant: Any, gated: bool,
                   alarms: list[str], others: list[ComponentNeed],
                   concurrency: int | None = None) -> ComponentPlan:
    """The component this config adds to `endpoint`, packed with `others` (the components of
    the configs named alongside it) on instances of `shape`. Every impossibility is a
    UserInputError naming the inference_component field to change. concurrency: the
    workload's, which the copies share (copy_sizing)."""
    need = component_need(section, endpoint, option, weights_bytes)
    copies = section.copies or option.model_copies * option.instance_count
    most = need.copies
    if section.min_copies > most:
        raise UserInputError("inference_component.min_copies",
                             f"{section.min_copies} is above max_copies {most}")
    try:
        packing = pack([need, *others], shape)
        first = pack([need.model_copy(update={"copies": copies})], shape)
    except DoesNotFit as exc:
        field = ("inference_component.cpu_cores" if "CPU" in exc.reason
                 else "instance.instance_type")
        raise UserInputError(field, f"component {exc.component}: {exc.reason}") from None
    needed = max(1, packing.instance_count)
    top = section.max_instances if section.max_instances is not None else needed
    if top < needed:
        raise UserInputError("inference_component.max_instances",
                             f"{top} instance(s) of {shape.instance_type} cannot hold the "
                             f"copies: {needed} needed at max_copies")
    if section.min_instances > top:
        raise UserInputError("inference_component.min_instances",
                             f"{section.min_instances} is above max_instances {top}")
    batch, scaling = copy_sizing(section, option, concurrency, gated)
    return ComponentPlan(
        name=need.name, candidate="", endpoint=endpoint,
        instance_type=shape.instance_type,
        resources=ComponentResources(accelerators=need.accelerators,
                                     memory_mb=need.memory_mb, cpu_cores=need.cpu_cores),
        copies=copies, batch_per_copy=batch, scaling=scaling,
        min_instances=section.min_instances, max_instances=top,
        initial_instances=max(1, first.instance_count), packing=packing,
        alongside=[o.name for o in others],
        startup_timeouts_s=(variant.model_data_download_timeout_s,
                            variant.container_startup_health_check_timeout_s),
        rollback_alarms=list(alarms))


def shared_endpoint_error(c: ComponentPlan, config_name: str,
                          variant: dict[str, Any]) -> tuple[str, str] | None:
    """(field, reason) where an existing endpoint cannot hold this component; None where it
    can. The endpoint's instance type and managed instance limits are those of the endpoint
    config it was created with (the first config deployed to it): lmiflow adds and updates
    components there but never replaces that endpoint config, so a later config that needs
    another instance type or more instances is refused before anything is created, naming
    what it needs and what sets the limit. variant: the endpoint config's production variant
    as DescribeEndpointConfig answers it."""
    itype = variant.get("InstanceType")
    made = f"endpoint config {config_name}, made by the deploy that created {c.endpoint}"
    if itype and itype != c.instance_type:
        return ("instance.instance_type",
                f"{c.endpoint} runs {itype} ({made}); this component is planned on "
                f"{c.instance_type}: set instance.instance_type to {itype}")
    scaling = variant.get("ManagedInstanceScaling") or {}
    top = scaling.get("MaxInstanceCount")
    if scaling.get("Status") != "ENABLED" or top is None or top >= c.max_instances:
        return None
    what = "this component" + (f" with {', '.join(c.alongside)}" if c.alongside else "")
    return ("inference_component.max_instances",
            f"{c.endpoint} may hold at most {top} instance(s) (MaxInstanceCount of {made}) "
            f"and lmiflow does not change it; {what} at max copies needs "
            f"{c.max_instances}: set inference_component.max_instances to "
            f"{c.max_instances} in the config that creates {c.endpoint}, then delete the "
            f"endpoint and deploy that config first, or lower max_copies")


# ---- requests -------------------------------------------------------------------------------


def _r(operation: str, service: str = "sagemaker", **params: Any) -> AwsRequest:
    return AwsRequest(service=service, operation=operation, params=params)


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def endpoint_config_request(name: str, c: ComponentPlan, role_arn: str,
                            variant: Any, tags: dict[str, str]) -> AwsRequest:
    """An endpoint config for components: no model in the variant (the components bring
    theirs), instances managed between min and max, and the execution role the components'
    containers run with. variant: base.EndpointVariant (AMI, routing)."""
    pv: dict[str, Any] = {
        "VariantName": VARIANT_NAME, "InstanceType": c.instance_type,
        "InitialInstanceCount": c.initial_instances,
        "ManagedInstanceScaling": {"Status": "ENABLED", "MinInstanceCount": c.min_instances,
                                   "MaxInstanceCount": c.max_instances},
        "RoutingConfig": {"RoutingStrategy": variant.routing_strategy
                          or "LEAST_OUTSTANDING_REQUESTS"},
    }
    if variant.inference_ami_version is not None:
        pv["InferenceAmiVersion"] = variant.inference_ami_version
    return _r("CreateEndpointConfig", EndpointConfigName=name, ExecutionRoleArn=role_arn,
              ProductionVariants=[pv], Tags=_tags(tags))


def _specification(c: ComponentPlan, model: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ModelName": model,
        "ComputeResourceRequirements": {
            "NumberOfAcceleratorDevicesRequired": float(c.resources.accelerators),
            "NumberOfCpuCoresRequired": float(c.resources.cpu_cores),
            "MinMemoryRequiredInMb": c.resources.memory_mb,
        },
    }
    download, health = c.startup_timeouts_s
    startup = {}
    if download is not None:
        startup["ModelDataDownloadTimeoutInSeconds"] = download
    if health is not None:
        startup["ContainerStartupHealthCheckTimeoutInSeconds"] = health
    if startup:
        spec["StartupParameters"] = startup
    return spec


def create_component_request(name: str, endpoint: str, model: str, c: ComponentPlan,
                             tags: dict[str, str]) -> AwsRequest:
    return _r("CreateInferenceComponent", InferenceComponentName=name, EndpointName=endpoint,
              VariantName=VARIANT_NAME, Specification=_specification(c, model),
              RuntimeConfig={"CopyCount": c.copies}, Tags=_tags(tags))


def update_component_request(name: str, model: str, c: ComponentPlan,
                             wait_interval_s: int) -> AwsRequest:
    """A rolling update: one copy at a time moves to the new model (SageMaker starts the new
    copy before it stops an old one), rolled back one copy at a time on a rollback alarm.
    The copy count is left to auto scaling (no RuntimeConfig)."""
    policy: dict[str, Any] = {
        "MaximumBatchSize": {"Type": "COPY_COUNT", "Value": 1},
        "WaitIntervalInSeconds": wait_interval_s,
        "RollbackMaximumBatchSize": {"Type": "COPY_COUNT", "Value": 1},
    }
    deployment: dict[str, Any] = {"RollingUpdatePolicy": policy}
    if c.rollback_alarms:
        deployment["AutoRollbackConfiguration"] = {
            "Alarms": [{"AlarmName": a} for a in c.rollback_alarms]}
    return _r("UpdateInferenceComponent", InferenceComponentName=name,
              Specification=_specification(c, model), DeploymentConfig=deployment)


def describe_endpoint_request(name: str) -> AwsRequest:
    return _r("DescribeEndpoint", EndpointName=name)


def describe_endpoint_config_request(name: str) -> AwsRequest:
    return _r("DescribeEndpointConfig", EndpointConfigName=name)


def describe_component_request(name: str) -> AwsRequest:
    return _r("DescribeInferenceComponent", InferenceComponentName=name)


def list_components_request(endpoint: str) -> AwsRequest:
    return _r("ListInferenceComponents", EndpointNameEquals=endpoint)


def delete_component_request(name: str) -> AwsRequest:
    return _r("DeleteInferenceComponent", InferenceComponentName=name)


def resource_id(component: str) -> str:
    return f"inference-component/{component}"


def policy_name(component: str, kind: str) -> str:
    return f"{component}-{kind}"


def alarm_name(component: str) -> str:
    return f"{component}-no-capacity"


def scaling_requests(c: ComponentPlan, policy_arn: str) -> list[AwsRequest]:
    """Auto scaling on copies: the scalable target, target tracking on the high-resolution
    concurrency per copy, and, with min_copies 0, the way back from zero (a step policy on an
    alarm over failed invocations). policy_arn: the step policy's ARN, known once created."""
    s, rid = c.scaling, resource_id(c.name)
    aas = "application-autoscaling"
    out = [
        _r("RegisterScalableTarget", aas, ServiceNamespace="sagemaker", ResourceId=rid,
           ScalableDimension=COPY_DIMENSION, MinCapacity=s.min_copies,
           MaxCapacity=s.max_copies),
        _r("PutScalingPolicy", aas, PolicyName=policy_name(c.name, "concurrency"),
           ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=COPY_DIMENSION,
           PolicyType="TargetTrackingScaling",
           TargetTrackingScalingPolicyConfiguration={
               "TargetValue": float(s.target_per_copy),
               "PredefinedMetricSpecification": {"PredefinedMetricType": COPY_METRIC},
               "ScaleInCooldown": s.scale_in_cooldown_s,
               "ScaleOutCooldown": s.scale_out_cooldown_s}),
    ]
    if c.scales_to_zero:
        out += [
            _r("PutScalingPolicy", aas, PolicyName=policy_name(c.name, "from-zero"),
               ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=COPY_DIMENSION,
               PolicyType="StepScaling",
               StepScalingPolicyConfiguration={
                   "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Maximum",
                   "Cooldown": s.scale_out_cooldown_s,
                   "StepAdjustments": [{"MetricIntervalLowerBound": 0.0,
                                        "ScalingAdjustment": 1}]}),
            _r("PutMetricAlarm", "cloudwatch", AlarmName=alarm_name(c.name),
               AlarmDescription=f"a request found no copy of {c.name}: add one",
               Namespace="AWS/SageMaker", MetricName=NO_CAPACITY_METRIC,
               Dimensions=[{"Name": "InferenceComponentName", "Value": c.name}],
               Statistic="Maximum", Period=30, EvaluationPeriods=1, Threshold=1.0,
               ComparisonOperator="GreaterThanOrEqualToThreshold",
               TreatMissingData="missing", AlarmActions=[policy_arn]),
        ]
    return out


def unscale_requests(component: str) -> list[AwsRequest]:
    """Scaling removed before the component goes (teardown): its scalable target (with its
    policies) and the no-capacity alarm, where it has one."""
    return [_r("DeregisterScalableTarget", "application-autoscaling",
               ServiceNamespace="sagemaker", ResourceId=resource_id(component),
               ScalableDimension=COPY_DIMENSION),
            _r("DeleteAlarms", "cloudwatch", AlarmNames=[alarm_name(component)])]


def step_policy_arn(region: str, account: str, partition: str, component: str) -> str:
    """The from-zero policy's ARN as a dry run shows it (the run uses the one
    PutScalingPolicy answers; the id part is known only then)."""
    return (f"arn:{partition}:autoscaling:{region}:{account}:scalingPolicy:"
            f"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx:resource/sagemaker/"
            f"{resource_id(component)}:policyName/{policy_name(component, 'from-zero')}")
