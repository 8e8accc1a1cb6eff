"""What the endpoint will be, decided from the config and the plan before anything exists: the
LMI image (and what it accepts), serving.properties for that image's engine, the host AMI its
CUDA needs, the routing, and what the promotion will hold at its peak.

Pure: config and plan in, typed decisions out; every impossibility is a UserInputError that
names the config field, so it exits 2 at plan time.
"""

from __future__ import annotations

import math

from lmiflow.errors import UserInputError
from lmiflow.report.model import HostSettings, PromotionPlan
from lmiflow.secrets import masked_entries
from lmiflow.serving.images import LmiImage, resolve
from lmiflow.serving.plan_properties import PlanError, ServingPlan, render_plan
from lmiflow.serving.properties import ServingProperties
from lmiflow.sizing.planner import Plan
from lmiflow.spec import DeploymentSpec
from lmiflow.targets.blue_green import fleet_peak, traffic_shift_error
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


# TensorRT-LLM images build the engine when the container starts, before /ping answers: the
# LMI docs give "approximately 7 minutes and more" for 40-70B models (djl-serving 0.33.0-dlc
# serving/docs/lmi/tutorials/trtllm_aot_tutorial.md line 6), taken as 10 minutes for the build
# itself; the conversion also writes a TensorRT-LLM checkpoint and then the engine, each about
# the size of the weights, at the 50 MB/s the start-up timeout already assumes for loading
# (targets/sagemaker.py sizing_timeouts): 2 x 20 s per GB.
ENGINE_BUILD_S = 600
ENGINE_WRITE_S_PER_GB = 40
STARTUP_MAX_S = 3600  # ContainerStartupHealthCheckTimeoutInSeconds' upper bound (60-3600)


def engine_build_s(image: LmiImage, weights_bytes: float) -> int:
    """Seconds the container spends compiling the engine at start-up (0: vLLM loads the
    checkpoint as it is)."""
    if image.backend != "trtllm":
        return 0
    return ENGINE_BUILD_S + math.ceil(ENGINE_WRITE_S_PER_GB * max(0.0, weights_bytes) / 1e9)


def startup_with_build(startup_s: int | None, build_s: int) -> int | None:
    """The start-up health-check timeout with the engine build added, within SageMaker's
    3600 s (None: the target sets none)."""
    if startup_s is None or build_s <= 0:
        return startup_s
    return min(STARTUP_MAX_S, startup_s + build_s)


def serving_plan(spec: DeploymentSpec, p: Plan, model_id: str, dtype: str,
                 model_loading_timeout_s: int | None = None,
                 max_batch: int | None = None) -> ServingPlan:
    """The plan's decisions for one model copy. `dtype` is what the container is told
    (pipeline.serving_dtype); max_batch: the copy's batch where it is not the plan's (an
    inference component's copy, sized by its own share of the workload)."""
    o, w = p.chosen, spec.workload
    if o is None:
        raise UserInputError("plan", p.chosen_reason)
    gpu = o.per_gpu
    return ServingPlan(
        model_id=model_id, revision=spec.model.revision,
        trust_remote_code=spec.model.trust_remote_code,
        tensor_parallel_degree=o.tensor_parallel_degree,
        max_batch=max_batch or o.concurrency_per_copy,
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
        return render_plan(plan, image, extra={**spec.serving.options,
                                               **masked_entries(spec.serving.secret_options)})
    except PlanError as exc:
        raise UserInputError(exc.field, exc.reason) from None
    except ValueError as exc:
        raise UserInputError("serving.options", str(exc)) from None


def host_settings(spec: DeploymentSpec, image: LmiImage) -> HostSettings:
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
        return HostSettings(inference_ami_version=pinned, routing_strategy=routing,
                            why="pinned by instance.inference_ami_version", warning=warning)
    try:
        ami = ami_for_cuda(cuda)
    except ValueError as exc:
        raise UserInputError("serving.image_version", str(exc)) from None
    return HostSettings(
        inference_ami_version=ami.name, routing_strategy=routing,
        why=(f"image {image.tag} is built for CUDA {image.cuda}; {ami.name} has NVIDIA driver "
             f"{ami.nvidia_driver} (CUDA {ami.cuda[0]}.{ami.cuda[1]}), the lowest that serves "
             f"it ({AMI_SOURCE})"))


def promotion_plan(spec: DeploymentSpec, p: Plan, shifts_traffic: bool) -> PromotionPlan:
    """The promotion on the plan's fleet. shifts_traffic: the target moves traffic in steps
    (SageMaker), so CANARY / LINEAR sizes are checked against the instance count it chose."""
    o, pr = p.chosen, spec.promotion
    if o is None:
        raise UserInputError("plan", p.chosen_reason)
    n = o.instance_count
    step = None
    if shifts_traffic:
        shift = traffic_shift_error(pr.strategy, pr.canary_size_pct, pr.linear_step_pct, n)
        if shift:
            raise UserInputError(shift[0], f"{shift[1]} (the plan chose {n} x "
                                           f"{o.instance_type})")
        pct = {"CANARY": pr.canary_size_pct, "LINEAR": pr.linear_step_pct}.get(pr.strategy)
        if pct is not None:
            step = f"{pct} % of {n} = {pct * n / 100:g} instance(s)"
    return with_peak(PromotionPlan(
        strategy=pr.strategy, instance_type=o.instance_type, instance_count=n,
        traffic_step=step, termination_wait_s=pr.termination_wait_s, alarms=list(pr.alarms),
        peak_instances={}, peak_assumption="", quota_names={}), None)


def with_peak(plan: PromotionPlan, production: dict[str, int] | None) -> PromotionPlan:
    """The plan with its peak fleet: assumed (production None: a redeploy of the same shape)
    or from production as described (targets.blue_green.fleet_peak)."""
    peak = fleet_peak(plan.instance_type, plan.instance_count, production)
    return plan.model_copy(update={"peak_instances": peak.instances,
                                   "peak_assumption": peak.assumption,
                                   "quota_names": peak.quota_names})
