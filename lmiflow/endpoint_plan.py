"""What the endpoint will be, decided from the config and the plan before anything exists: the
LMI image (and what it accepts), serving.properties for that image's engine, the host AMI its
CUDA needs, the routing, and what the promotion will hold at its peak.

Pure: config and plan in, typed decisions out; every impossibility is a UserInputError that
names the config field, so it exits 2 at plan time.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from lmiflow.errors import UserInputError
from lmiflow.serving.images import LmiImage, resolve
from lmiflow.serving.plan_properties import PlanError, ServingPlan, render_plan
from lmiflow.serving.properties import ServingProperties
from lmiflow.sizing.planner import Plan
from lmiflow.spec import DeploymentSpec
from lmiflow.targets.blue_green import FleetPeak, fleet_peak, traffic_shift_error
from lmiflow.targets.inference_ami import SOURCE as AMI_SOURCE
from lmiflow.targets.inference_ami import ami_for_cuda, by_name


def image_for(spec: DeploymentSpec) -> LmiImage:
    """The LMI image the config selects (SDK's latest when it names none)."""
    sv = spec.serving
    try:
        return resolve(sv.backend, sv.image_version, sv.image_uri)
    except ValueError as exc:
        field, _, reason = str(exc).partition(": ")
        raise UserInputError(field, reason) from None


def serving_plan(spec: DeploymentSpec, p: Plan, model_id: str, dtype: str,
                 model_loading_timeout_s: int | None = None) -> ServingPlan:
    """The plan's decisions for one model copy. `dtype` is what the container is told
    (pipeline.serving_dtype)."""
    o, w = p.chosen, spec.workload
    if o is None:
        raise UserInputError("plan", p.chosen_reason)
    gpu = o.per_gpu
    return ServingPlan(
        model_id=model_id, revision=spec.model.revision,
        trust_remote_code=spec.model.trust_remote_code,
        tensor_parallel_degree=o.tensor_parallel_degree,
        max_batch=o.concurrency_per_copy,
        max_input_tokens=w.max_input_tokens, max_output_tokens=w.max_output_tokens,
        dtype=dtype, activation_dtype=o.dtype, kv_cache_dtype=p.dtypes.kv_cache,
        gpu_memory_utilization=spec.instance.gpu_memory_utilization,
        gpu_memory_bytes=o.gpu_memory_bytes,
        fixed_bytes_per_gpu=gpu["weights_bytes"] + gpu["overhead_bytes"],
        model_loading_timeout_s=model_loading_timeout_s,
    )


def serving_properties(spec: DeploymentSpec, plan: ServingPlan,
                       image: LmiImage) -> ServingProperties:
    try:
        return render_plan(plan, image, extra=spec.serving.options)
    except PlanError as exc:
        raise UserInputError(exc.field, exc.reason) from None
    except ValueError as exc:
        raise UserInputError("serving.options", str(exc)) from None


class HostChoice(BaseModel):
    """The production variant's host settings and why."""

    inference_ami_version: str
    routing_strategy: str
    why: str
    warning: str | None = None


def host_choice(spec: DeploymentSpec, image: LmiImage) -> HostChoice:
    """InferenceAmiVersion: pinned by the config, else the lowest AMI whose driver serves the
    image's CUDA (targets.inference_ami)."""
    cuda = image.cuda_version
    pinned = spec.instance.inference_ami_version
    routing = spec.instance.routing_strategy
    if pinned:
        ami = by_name(pinned)
        warning = None
        if ami is not None and ami.cuda < cuda:
            warning = (f"instance.inference_ami_version {pinned} has CUDA "
                       f"{ami.cuda[0]}.{ami.cuda[1]} (driver {ami.nvidia_driver}) but the image "
                       f"{image.tag} is built for CUDA {image.cuda}: it relies on the image's "
                       "forward-compatibility libraries")
        return HostChoice(inference_ami_version=pinned, routing_strategy=routing,
                          why="pinned by instance.inference_ami_version", warning=warning)
    try:
        ami = ami_for_cuda(cuda)
    except ValueError as exc:
        raise UserInputError("serving.image_version", str(exc)) from None
    return HostChoice(
        inference_ami_version=ami.name, routing_strategy=routing,
        why=(f"image {image.tag} is built for CUDA {image.cuda}; {ami.name} has NVIDIA driver "
             f"{ami.nvidia_driver} (CUDA {ami.cuda[0]}.{ami.cuda[1]}), the lowest that serves "
             f"it ({AMI_SOURCE})"))


class PromotionPlan(BaseModel):
    """How production will change, and the most instances the run holds at once."""

    strategy: str
    traffic_step: str | None = Field(description="The first traffic step, in instances.")
    termination_wait_s: int
    alarms: list[str]
    peak: FleetPeak


def promotion_plan(spec: DeploymentSpec, p: Plan) -> PromotionPlan:
    o, pr = p.chosen, spec.promotion
    if o is None:
        raise UserInputError("plan", p.chosen_reason)
    n = o.instance_count
    shift = traffic_shift_error(pr.strategy, pr.canary_size_pct, pr.linear_step_pct, n)
    if shift:
        raise UserInputError(shift[0], f"{shift[1]} (the plan chose {n} x {o.instance_type})")
    step = None
    if pr.strategy == "CANARY":
        step = f"{pr.canary_size_pct} % of {n} = {pr.canary_size_pct * n / 100:g} instance(s)"
    elif pr.strategy == "LINEAR":
        step = f"{pr.linear_step_pct} % of {n} = {pr.linear_step_pct * n / 100:g} instance(s)"
    return PromotionPlan(strategy=pr.strategy, traffic_step=step,
                         termination_wait_s=pr.termination_wait_s, alarms=list(pr.alarms),
                         peak=fleet_peak(o.instance_type, n))
