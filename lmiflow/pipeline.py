"""The pipeline's decisions, free of Prefect: what each step computes from the config and the
results before it. Tasks wrap these with retries and artifacts; `--dry-run` calls them
directly, so planning never needs an API server or a cloud call."""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from lmiflow import endpoint_plan, patterns
from lmiflow.errors import UserInputError
from lmiflow.model_source import ResolvedModel, resolve_model, resolved_from_s3
from lmiflow.report.model import HostSettings, PromotionPlan
from lmiflow.secrets import check_env_refs, fill_properties
from lmiflow.serving.images import LmiImage
from lmiflow.sizing.autoscaling import ScalingPlan, scaling_plan
from lmiflow.sizing.memory import DTypeChoice, MemoryBreakdown, resolve_dtypes, total_estimate
from lmiflow.sizing.packing import ComponentNeed
from lmiflow.sizing.planner import LatencyLimit, Plan, PlanRequest, plan
from lmiflow.spec import DeploymentSpec
from lmiflow.targets import configured_target
from lmiflow.targets.aws_requests import AwsRequest, InvalidRequest, validate_all
from lmiflow.targets.base import EndpointVariant, PlannedRun, Target, TrafficPolicy
from lmiflow.targets.components_plan import ComponentPlan
from lmiflow.targets.weights import (
    ModelSource,
    WeightsPlan,
    hub_source,
    hub_token,
    local_source,
    s3_read_requests,
)
from lmiflow.targets.weights import plan_weights as weights_plan

PROJECT_TAG = "lmiflow"


@lru_cache(maxsize=8)
def _target(kind: str, region: str | None, role_arn: str | None, s3_uri: str | None,
            block: str | None, packaging: str, state_dir: str | None,
            vpc: tuple[tuple[str, ...], tuple[str, ...]] | None, lease_ttl_s: int,
            mode: str) -> Target:
    return configured_target(kind, state_dir=state_dir, region=region, role_arn=role_arn,
                             s3_uri=s3_uri, credentials_block=block, packaging=packaging,
                             vpc=vpc, lease_ttl_s=lease_ttl_s, mode=mode)


def target_for(spec: DeploymentSpec) -> Target:
    """One target per process and config (credentials come from the block, not a client).
    Building one creates nothing: a dry run plans with it."""
    t = spec.target
    vpc = (tuple(t.vpc.subnets), tuple(t.vpc.security_group_ids)) if t.vpc else None
    return _target(t.kind, t.region, t.role_arn, t.s3_uri, t.aws_credentials_block, t.packaging,
                   os.environ.get("LMIFLOW_STATE_DIR"), vpc, spec.promotion.lease_ttl_s,
                   t.mode)


class Names(BaseModel):
    """Deterministic names of one candidate: the same spec always gets the same names, so a
    rerun finds what an interrupted run left."""

    production: str
    endpoint: str
    endpoint_config: str
    model: str
    spec_hash: str
    component: ComponentPlan | None = Field(
        default=None, description="The candidate's inference component, where the target runs "
        "the model as one: its name and what it reserves travel with the other names.")


class MemoryEstimate(MemoryBreakdown):
    """The whole model copy (unsharded), with the dtypes the engine will use."""

    dtypes: DTypeChoice


class Candidate(BaseModel):
    """What one candidate deployment is: its serving.properties, image and names, how its
    container gets the weights, the host its image needs (None where the target runs no
    image), and how it will be promoted."""

    properties: str
    image_uri: str | None
    names: Names
    weights: WeightsPlan
    host: HostSettings | None = None
    engine_build_s: int = Field(default=0, description="Seconds the container compiles the "
                                "engine at start-up (TensorRT-LLM), added to its timeouts.")
    promotion: PromotionPlan | None = None
    component: ComponentPlan | None = None
    autoscaling: ScalingPlan | None = None


def fetch_config(spec: DeploymentSpec) -> ResolvedModel:
    """The model's config.json and where its weights are. A Hub id is checked for access
    with the token the run would download with, before anything is created; an s3:// model
    is read from its prefix by the target."""
    m = spec.model
    token = hub_token(m.hf_token_secret)
    plain = token.get_secret_value() if token is not None else None
    if m.id.startswith("s3://"):
        return resolved_from_s3(*target_for(spec).read_s3_model(m.id))
    origin = None
    if not Path(m.id).expanduser().exists() and patterns.matches(patterns.HUB_ID, m.id):
        try:  # access first: a gated repository must say so, not look unreachable
            origin = hub_source(m.id, m.revision, token, m.trust_remote_code)
        except UserInputError:
            raise
        except Exception as exc:  # the Hub cannot be reached: plan from a bundled snapshot
            origin = ModelSource(kind="hub", id=m.id, revision=m.revision, access="unknown",
                                 note=f"Hub unreachable ({type(exc).__name__}): file list "
                                      "and access not checked")
    resolved = resolve_model(m.id, m.revision, token=plain)
    if resolved.source.startswith("local:"):
        origin = local_source(resolved.local_dir, m.trust_remote_code)
    return resolved.model_copy(update={"origin": origin})


def plan_weights(spec: DeploymentSpec, model: ResolvedModel) -> WeightsPlan:
    """How the container gets the weights (hub download, staged into S3, an s3:// prefix)."""
    origin = model.origin or ModelSource(kind="hub", id=spec.model.id, access="unknown")
    plan_ = weights_plan(spec, origin)
    if plan_.token_to_container and hub_token(spec.model.hf_token_secret) is None:
        raise UserInputError("model.token_to_container", "there is no Hub token to pass: set "
                             "HF_TOKEN or model.hf_token_secret")
    return plan_


def latency_limits(spec: DeploymentSpec) -> list[LatencyLimit]:
    """The latency gates that bound from above (TTFT, TPOT, E2E), as limits the plan must meet;
    a gate on a statistic the latency model does not predict is refused, not checked against
    another one."""
    out = []
    for i, g in enumerate(spec.gates):
        if g.metric in ("ttft_ms", "tpot_ms", "e2e_ms") and g.op in ("<", "<="):
            try:
                out.append(LatencyLimit(metric=g.metric, stat=g.stat, threshold=g.threshold,
                                        concurrency=g.concurrency, source="gate"))
            except ValidationError as exc:
                raise UserInputError(f"gates[{i}].stat",
                                     exc.errors()[0]["msg"].removeprefix("Value error, ")
                                     ) from None
    return out


def plan_request(spec: DeploymentSpec, target: Target) -> PlanRequest:
    inst = spec.instance
    return PlanRequest(
        dtype=spec.model.dtype, kv_cache_dtype=spec.model.kv_cache_dtype,
        max_input_tokens=spec.workload.max_input_tokens,
        max_output_tokens=spec.workload.max_output_tokens,
        concurrency=spec.workload.concurrency, instance_count=inst.count,
        gpu_memory_utilization=inst.gpu_memory_utilization, allow=inst.allow,
        instance_type=inst.instance_type, tensor_parallel_degree=inst.tensor_parallel_degree,
        max_usd_per_hour=inst.max_usd_per_hour, max_instance_count=inst.max_count,
        engine=target.serving_engine(spec.serving.backend),
        latency_limits=latency_limits(spec),
    )


def compute_memory(spec: DeploymentSpec, model: ResolvedModel) -> MemoryEstimate:
    """The whole-model estimate (unsharded); per-GPU figures come with each plan option."""
    try:
        dtypes = resolve_dtypes(model.spec, spec.model.dtype, spec.model.kv_cache_dtype)
    except ValueError as exc:
        raise UserInputError("model.dtype", str(exc)) from None
    tokens = spec.workload.max_input_tokens + spec.workload.max_output_tokens
    est = total_estimate(model.spec, dtypes, tokens, spec.workload.concurrency)
    return MemoryEstimate(dtypes=dtypes, **est.model_dump())


def choose_instance(spec: DeploymentSpec, model: ResolvedModel, target: Target,
                    *, offline: bool = False) -> Plan:
    """The plan over the target's instances (the catalog, or this machine for local), with
    the latency model calibrated by the benchmarks in the target's calibration store where
    there are any (offline: a dry run, which reads no store a service holds)."""
    from lmiflow.calibration_store import planning_calibration

    calibration, problem = planning_calibration(target, offline=offline)
    catalog = target.instance_catalog()
    p = plan(model.spec, plan_request(spec, target), catalog, calibration=calibration)
    if problem:
        p.warnings.append(problem)
    offered = [str(t) for t in catalog["instance_type"]]
    if not p.options and (spec.instance.allow or spec.instance.instance_type) \
            and len(offered) <= 3:
        # A config written for one target run on another (--target local on a SageMaker
        # config): say what this target has, not only that nothing matched.
        raise UserInputError("instance.allow", f"{p.chosen_reason}; this target has only "
                                               f"{', '.join(offered)}: remove instance.allow "
                                               "and instance.instance_type, or match it")
    if p.chosen is None:
        raise UserInputError("plan", p.chosen_reason)
    return p


def serving_model_id(spec: DeploymentSpec, model: ResolvedModel, target: Target) -> str:
    """What option.model_id names: the target decides what a local directory becomes."""
    local_dir = model.local_dir if model.source.startswith("local:") else None
    return target.serving_model_id(spec.model.id, local_dir)


def serving_dtype(spec: DeploymentSpec, p: Plan) -> str:
    """The dtype the container is told: pre-quantized checkpoints load as `auto`."""
    if spec.model.dtype == "auto" and p.dtypes.weights in ("fp8", "int8", "int4"):
        return "auto"
    if spec.model.dtype == "fp8":
        return "fp8"
    return p.chosen.dtype


def render_serving_properties(spec: DeploymentSpec, model: ResolvedModel, p: Plan,
                              target: Target, weights: WeightsPlan, image: LmiImage,
                              variant: EndpointVariant | None = None,
                              max_batch: int | None = None) -> str:
    """serving.properties for the plan, in the words `image` understands, as every report and
    printout shows it: secret entries masked (the staged copy gets their values:
    staged_properties). Weights in /opt/ml/model (staged or an s3:// model) need no
    option.model_id. LMI's own model-loading timeout follows the endpoint's start-up timeout,
    so the container does not give up on a large model before SageMaker would (`variant`:
    the endpoint's, engine build included; default the target's for the plan). max_batch:
    the copy's batch where it is not the plan's (an inference component). A value the
    target's server would refuse at start-up is exit 2 here, naming the field it came from."""
    from lmiflow.serving.options import OptionError
    from lmiflow.serving.properties import render

    check_env_refs(spec.serving.secret_options, "serving.secret_options")
    if variant is None:
        variant = endpoint_variant_for(p, target, None, endpoint_plan.engine_build_s(
            image, p.memory.weights_bytes))
    from_s3 = weights.container_loads_from_s3
    plan = endpoint_plan.serving_plan(
        spec, p, None if from_s3 else serving_model_id(spec, model, target),
        serving_dtype(spec, p), variant.container_startup_health_check_timeout_s, max_batch)
    plan = plan.model_copy(update={"model_max_len": model.spec.max_position_embeddings,
                                   **({"revision": None} if from_s3 else {})})
    text = render(endpoint_plan.serving_properties(spec, plan, image))
    try:
        target.check_properties(text)
    except OptionError as exc:
        raise UserInputError(_field_of(spec, exc.key), str(exc)) from None
    return text


# Where a rendered key's value came from when the user did not set it in serving.options.
_DERIVED_FROM = {
    "option.max_rolling_batch_size": "workload.concurrency",
    "option.max_model_len": "workload.max_input_tokens",
    "option.dtype": "model.dtype",
    "option.gpu_memory_utilization": "instance.gpu_memory_utilization",
}


def _field_of(spec: DeploymentSpec, key: str) -> str:
    if key in spec.serving.options:
        return f"serving.options.{key}"
    return _DERIVED_FROM.get(key, "serving.options")


def staged_properties(spec: DeploymentSpec, text: str) -> str:
    """The text to stage: the rendered file with each secret entry's real value."""
    return fill_properties(text, spec.serving.secret_options, "serving.secret_options")


def image_uri(spec: DeploymentSpec, target: Target, image: LmiImage) -> str | None:
    """The serving image the target runs for the chosen LMI release (None: no image)."""
    sv = spec.serving
    try:
        return target.image_uri(sv.backend, image.djl_version, sv.image_uri)
    except ValueError as exc:
        raise UserInputError("serving.image_version", str(exc).split(": ", 1)[-1]) from None


def names_for(spec: DeploymentSpec, properties: str, image: str | None, p: Plan,
              target: Target, weights: WeightsPlan, host: HostSettings | None = None,
              component: ComponentPlan | None = None) -> Names:
    """Names from a hash of everything that makes the deployment what it is (the host's AMI
    and routing included: they are part of the endpoint config)."""
    what = {"properties": properties, "image": image, "instance": p.chosen.instance_type,
            "count": p.chosen.instance_count, "target": spec.target.kind,
            "weights": [weights.delivery, weights.prefix, weights.network_isolation,
                        weights.token_to_container]}
    if host is not None:
        what["host"] = [host.inference_ami_version, host.routing_strategy]
    if component is not None:  # what the component reserves and how its endpoint scales
        what["component"] = component.model_dump(
            mode="json", include={"name", "resources", "copies", "min_instances",
                                  "max_instances", "initial_instances"})
    blob = json.dumps(what, sort_keys=True)
    h = hashlib.sha256(blob.encode()).hexdigest()[:8]
    return Names(production=spec.name, spec_hash=h, **target.resource_names(spec.name, h))


def prepare_serving(spec: DeploymentSpec, model: ResolvedModel, p: Plan, target: Target,
                    alongside: list[ComponentNeed] | None = None) -> Candidate:
    """serving.properties text, the image URI and the candidate's names, how the weights
    travel, the host the image needs, the promotion plan and, where the target runs the model
    as an inference component, that component (packed with `alongside`: the components of
    other configs on the same endpoint): what one candidate is, shared by the Prefect task
    and the dry run."""
    weights = plan_weights(spec, model)
    image = endpoint_plan.image_for(spec)
    build_s = endpoint_plan.engine_build_s(image, p.memory.weights_bytes)
    uri = image_uri(spec, target, image)
    host = endpoint_plan.host_settings(spec, image) if uri else None
    variant = endpoint_variant_for(p, target, host, build_s)
    component = target.component_plan(
        spec.inference_component, spec.name, p.chosen, p.memory.weights_bytes, variant,
        bool(latency_limits(spec)), list(spec.promotion.alarms), alongside or [],
        spec.workload.concurrency)
    # a component's copy runs its own share of the workload (components_plan.copy_sizing)
    text = render_serving_properties(spec, model, p, target, weights, image, variant,
                                     component.batch_per_copy if component else None)
    names = names_for(spec, text, uri, p, target, weights, host, component)
    promotion = endpoint_plan.promotion_plan(spec, p, target.shifts_traffic)
    if component is not None:
        component = component.named(names.spec_hash)
        names = names.model_copy(update={"component": component})
        # a component is updated copy by copy on the endpoint's managed instances: its peak
        # is bounded by their maximum, counted like a redeploy of that many
        promotion = endpoint_plan.with_peak(promotion.model_copy(update={
            "strategy": "ROLLING", "instance_count": component.max_instances,
            "traffic_step": "one copy at a time"}), None)
    return Candidate(properties=text, image_uri=uri, weights=weights, names=names, host=host,
                     engine_build_s=build_s, promotion=promotion, component=component,
                     autoscaling=autoscaling_for(spec, p))


def alongside_needs(spec: DeploymentSpec, p: Plan, configs: list[str]) -> list[ComponentNeed]:
    """What the components of other configs naming the same endpoint reserve, each planned
    on this plan's instance type (an endpoint runs one): the packing then counts them."""
    from lmiflow.spec import load_spec

    out = []
    for path in configs:
        other = load_spec(path)
        if other.name != spec.name:
            raise UserInputError("--alongside", f"{path} names endpoint {other.name}, not "
                                                f"{spec.name}")
        other = other.model_copy(update={"instance": other.instance.model_copy(update={
            "instance_type": p.chosen.instance_type, "allow": []})})
        target = target_for(other)
        op = choose_instance(other, fetch_config(other), target)
        need = target.component_need(other.inference_component, other.name, op.chosen,
                                     op.memory.weights_bytes)
        if need is None:
            raise UserInputError("--alongside", f"{path} is not target.mode "
                                                "inference_component")
        out.append(need)
    return out


def autoscaling_for(spec: DeploymentSpec, p: Plan) -> ScalingPlan | None:
    """The config's autoscaling on the chosen option (sizing.autoscaling), checked against
    it: a target above what a copy holds, or a range that leaves out the count the plan
    starts with, is exit 2 naming the field."""
    a, o = spec.autoscaling, p.chosen
    if a is None or o is None:
        return None
    plan_ = scaling_plan(
        min_instances=a.min, max_instances=a.max, target=a.target, headroom_pct=a.headroom_pct,
        scale_in_cooldown_s=a.scale_in_cooldown_s, scale_out_cooldown_s=a.scale_out_cooldown_s,
        plan_max_per_copy=o.max_concurrency_per_copy, batch_per_copy=o.concurrency_per_copy,
        copies_per_instance=o.model_copies, initial_instances=o.instance_count)
    if a.target != "auto" and a.target > plan_.ceiling_per_copy:
        raise UserInputError("autoscaling.target", f"{a.target} concurrent requests per copy "
                             f"is above the {plan_.ceiling_per_copy} a copy of the plan holds "
                             f"({plan_.why[0]})")
    if o.instance_count > a.max:
        raise UserInputError("autoscaling.max", f"{a.max} is below the {o.instance_count} "
                             f"instances the plan needs for workload.concurrency "
                             f"{spec.workload.concurrency}")
    if a.min > o.instance_count:
        raise UserInputError("autoscaling.min", f"{a.min} is above the {o.instance_count} "
                             f"instance(s) the endpoint starts with (the plan's count): raise "
                             f"instance.count to {a.min} or lower autoscaling.min")
    return plan_


def tags_for(names: Names, run_id: str | None, target: Target | None = None
             ) -> dict[str, str]:
    """The run's tags, and the target's own (where it keeps the endpoint's lease and files,
    which `endpoints delete` reads back)."""
    return {"project": PROJECT_TAG, "lmiflow:endpoint": names.production,
            "lmiflow:spec-hash": names.spec_hash, "lmiflow:run-id": run_id or "none",
            **(target.resource_tags() if target is not None else {})}


def smoke_payload(spec: DeploymentSpec) -> dict:
    return {"inputs": spec.smoke_test.prompt,
            "parameters": {"max_new_tokens": spec.smoke_test.max_new_tokens, "details": True}}


def smoke_payloads(spec: DeploymentSpec) -> list[dict]:
    """The inputs form always; the chat form too when the benchmark speaks it (LMI answers
    `messages` in OpenAI's chat-completion format)."""
    out = [smoke_payload(spec)]
    if spec.benchmark.api == "messages":
        out.append({"messages": [{"role": "user", "content": spec.smoke_test.prompt}],
                    "max_tokens": spec.smoke_test.max_new_tokens})
    return out


def check_smoke_response(body: bytes) -> tuple[bool, str, str | None]:
    """(passed, generated text, why not). LMI answers a dict, or a one-item list of dicts."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False, body[:200].decode("utf-8", "replace"), "response is not JSON"
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("choices"), list) and data["choices"]:
        choice = data["choices"][0] if isinstance(data["choices"][0], dict) else {}
        text = (choice.get("message") or {}).get("content")
        if not isinstance(text, str):
            return False, str(data)[:200], "no choices[0].message.content in the chat response"
        if choice.get("finish_reason") == "error":
            return False, text, "finish_reason error"
        return True, text, None
    if not isinstance(data, dict) or "generated_text" not in data:
        return False, str(data)[:200], "no generated_text in the response"
    details = data.get("details") or {}
    if details.get("finish_reason") == "error":
        return False, data["generated_text"], "finish_reason error"
    tokens = details.get("generated_tokens")
    if tokens is not None and tokens < 1:
        return False, data["generated_text"], "no tokens generated"
    return True, data["generated_text"], None


def load_config(spec: DeploymentSpec):
    """bench.loadgen.LoadConfig from the config's benchmark section."""
    from lmiflow.bench.loadgen import LoadConfig

    b, w = spec.benchmark, spec.workload
    return LoadConfig(
        concurrency=b.concurrency, rates=b.rates, max_concurrency=b.max_in_flight,
        duration_s=b.duration_s, requests=b.requests, warmup=b.warmup_requests,
        repeats=b.repeats, max_new_tokens=b.max_new_tokens or min(w.max_output_tokens, 64),
        input_tokens=b.input_tokens or max(1, w.max_input_tokens // 4), api=b.api,
        prompts_file=b.prompts, fixed_length=b.fixed_length, seed=b.seed,
        timeout_s=b.timeout_s,
    )


def traffic_policy(spec: DeploymentSpec) -> TrafficPolicy:
    pr = spec.promotion
    return TrafficPolicy(
        type=pr.strategy, wait_interval_s=pr.wait_interval_s,
        canary_size_pct=pr.canary_size_pct if pr.strategy == "CANARY" else None,
        linear_step_pct=pr.linear_step_pct if pr.strategy == "LINEAR" else None,
        termination_wait_s=pr.termination_wait_s, alarms=pr.alarms)


def endpoint_variant(candidate: Candidate, p: Plan, target: Target) -> EndpointVariant:
    """The endpoint config's variant: the target's for the plan's instances, on the host the
    image needs (AMI, routing)."""
    return endpoint_variant_for(p, target, candidate.host, candidate.engine_build_s)


def endpoint_variant_for(p: Plan, target: Target, host: HostSettings | None,
                         build_s: int = 0) -> EndpointVariant:
    """The target's variant for the plan, its start-up timeout lengthened by the engine
    build (endpoint_plan.engine_build_s), on the host the image needs."""
    chosen = p.chosen
    variant = target.endpoint_variant(chosen.instance_type, chosen.instance_count,
                                      int(p.memory.weights_bytes))
    update: dict[str, object] = {
        "container_startup_health_check_timeout_s": endpoint_plan.startup_with_build(
            variant.container_startup_health_check_timeout_s, build_s)}
    if host is not None:
        update |= {"inference_ami_version": host.inference_ami_version,
                   "routing_strategy": host.routing_strategy}
    return variant.model_copy(update=update)


def planned_run(spec: DeploymentSpec, candidate: Candidate, p: Plan, target: Target,
                tags: dict[str, str]) -> PlannedRun:
    """Everything decided before the first request: what the target lists requests from."""
    from lmiflow.bench.loadgen import example_payload, planned_requests
    from lmiflow.bench.tokens import TOKENIZER_FILES

    names = candidate.names
    cfg = load_config(spec)
    return PlannedRun(
        production=names.production, endpoint=names.endpoint,
        endpoint_config=names.endpoint_config, model=names.model,
        properties=candidate.properties, image_uri=candidate.image_uri,
        variant=endpoint_variant(candidate, p, target),
        tags=tags, weights=candidate.weights, policy=traffic_policy(spec),
        smoke_payload=smoke_payload(spec), bench_payload=example_payload(cfg),
        bench_requests=planned_requests(cfg),
        endpoint_timeout_s=spec.promotion.endpoint_timeout_s, component=candidate.component,
        tokenizer_files=TOKENIZER_FILES, autoscaling=candidate.autoscaling)


def run_requests(spec: DeploymentSpec, model: ResolvedModel, candidate: Candidate, p: Plan,
                 target: Target, tags: dict[str, str]) -> list[AwsRequest]:
    """Every request the run will send (recorded_run), each valid for botocore's service
    model: a request the service would reject stops the run here, before anything is
    created."""
    from lmiflow.recorded_run import recorded_requests

    reqs = recorded_requests(spec, model, p, candidate, target, tags)
    if reqs and candidate.weights.source.kind == "s3":  # planning read the model there
        reqs = s3_read_requests(candidate.weights.source) + reqs
    try:
        return validate_all(reqs)
    except (InvalidRequest, ValueError) as exc:
        raise UserInputError("request", str(exc)) from None
