"""The pipeline's decisions, free of Prefect: what each step computes from the config and the
results before it. Tasks wrap these with retries and artifacts; `--dry-run` calls them
directly, so planning never needs an API server or a cloud call."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pydantic import BaseModel

from lmiflow.errors import UserInputError
from lmiflow.model_source import ResolvedModel, resolve_model
from lmiflow.secrets import check_env_refs, fill_properties, masked_entries
from lmiflow.sizing.memory import resolve_dtypes, total_estimate
from lmiflow.sizing.planner import LatencyLimit, Plan, PlanRequest, plan
from lmiflow.spec import DeploymentSpec

PROJECT_TAG = "lmiflow"


class Names(BaseModel):
    """Deterministic names of one candidate: the same spec always gets the same names, so a
    rerun finds what an interrupted run left."""

    production: str
    endpoint: str
    endpoint_config: str
    model: str
    spec_hash: str

    def as_dict(self) -> dict[str, str]:
        return {"endpoint": self.endpoint, "endpoint_config": self.endpoint_config,
                "model": self.model}


def fetch_config(spec: DeploymentSpec) -> ResolvedModel:
    return resolve_model(spec.model.id, spec.model.revision)


def latency_limits(spec: DeploymentSpec) -> list[LatencyLimit]:
    """The latency gates that bound from above (TTFT, TPOT, E2E), as limits the plan must meet."""
    return [LatencyLimit(metric=g.metric, stat=g.stat, threshold=g.threshold,
                         concurrency=g.concurrency, source="gate")
            for g in spec.gates
            if g.metric in ("ttft_ms", "tpot_ms", "e2e_ms") and g.op in ("<", "<=")]


def plan_request(spec: DeploymentSpec) -> PlanRequest:
    inst = spec.instance
    return PlanRequest(
        dtype=spec.model.dtype, kv_cache_dtype=spec.model.kv_cache_dtype,
        max_input_tokens=spec.workload.max_input_tokens,
        max_output_tokens=spec.workload.max_output_tokens,
        concurrency=spec.workload.concurrency, instance_count=inst.count,
        gpu_memory_utilization=inst.gpu_memory_utilization, allow=inst.allow,
        instance_type=inst.instance_type, tensor_parallel_degree=inst.tensor_parallel_degree,
        max_usd_per_hour=inst.max_usd_per_hour, max_instance_count=inst.max_count,
        engine="local" if spec.target.kind == "local" else spec.serving.backend,
        latency_limits=latency_limits(spec),
    )


def compute_memory(spec: DeploymentSpec, model: ResolvedModel) -> dict:
    """The whole-model estimate (unsharded); per-GPU figures come with each plan option."""
    try:
        dtypes = resolve_dtypes(model.spec, spec.model.dtype, spec.model.kv_cache_dtype)
    except ValueError as exc:
        raise UserInputError("model.dtype", str(exc)) from None
    tokens = spec.workload.max_input_tokens + spec.workload.max_output_tokens
    est = total_estimate(model.spec, dtypes, tokens, spec.workload.concurrency)
    return {"dtypes": dtypes.model_dump(), **est.model_dump()}


def catalog_for(spec: DeploymentSpec):
    """SageMaker plans over the instance catalog; the local target over this machine."""
    if spec.target.kind == "local":
        from lmiflow.sizing.catalog import catalog_with
        from lmiflow.targets.local_machine import detect

        return catalog_with([detect()])
    from lmiflow.sizing.catalog import load_catalog

    return load_catalog()


def choose_instance(spec: DeploymentSpec, model: ResolvedModel, catalog=None) -> Plan:
    from lmiflow.calibration_store import planning_calibration

    calibration, problem = planning_calibration()
    p = plan(model.spec, plan_request(spec), catalog if catalog is not None else catalog_for(spec),
             calibration=calibration)
    if problem:
        p.warnings.append(problem)
    if p.chosen is None:
        raise UserInputError("plan", p.chosen_reason)
    return p


def serving_model_id(spec: DeploymentSpec, model: ResolvedModel) -> str:
    """What option.model_id names: the Hub id on SageMaker; the directory for the local target
    (resolved, since the server runs with another working directory)."""
    if spec.target.kind == "local":
        if model.source.startswith("local:"):
            return str(Path(model.local_dir).resolve())
        return spec.model.id
    if model.source.startswith("local:"):
        raise UserInputError("model.id", "a local directory cannot be served on SageMaker: use "
                                         "a Hub id (or upload the weights and use s3://...)")
    return spec.model.id


def serving_dtype(spec: DeploymentSpec, p: Plan) -> str:
    """The dtype the container is told: pre-quantized checkpoints load as `auto`."""
    if spec.model.dtype == "auto" and p.dtypes.weights in ("fp8", "int8", "int4"):
        return "auto"
    if spec.model.dtype == "fp8":
        return "fp8"
    return p.chosen.dtype


def render_serving_properties(spec: DeploymentSpec, model: ResolvedModel, p: Plan) -> str:
    """The file's text as every report and printout shows it: secret entries masked (the
    staged copy gets their values: staged_properties)."""
    from lmiflow.serving.options import OptionError
    from lmiflow.serving.properties import properties_for, render
    from lmiflow.targets import check_serving_properties

    check_env_refs(spec.serving.secret_options, "serving.secret_options")
    w = spec.workload
    try:
        props = properties_for(
            model_id=serving_model_id(spec, model), revision=spec.model.revision,
            trust_remote_code=spec.model.trust_remote_code,
            tensor_parallel_degree=p.chosen.tensor_parallel_degree,
            max_batch=w.concurrency, max_model_len=w.max_input_tokens + w.max_output_tokens,
            dtype=serving_dtype(spec, p),
            gpu_memory_utilization=spec.instance.gpu_memory_utilization,
            backend=spec.serving.backend, quantize=None,
            extra={**spec.serving.options, **masked_entries(spec.serving.secret_options)},
            model_max_len=model.spec.max_position_embeddings,
        )
    except ValueError as exc:
        msg = str(exc)
        raise UserInputError("serving.options", msg) from None
    text = render(props)
    try:
        check_serving_properties(spec.target.kind, text)
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


def image_uri(spec: DeploymentSpec) -> str | None:
    """The LMI image (SageMaker SDK's offline tables); the local target runs no image."""
    if spec.target.kind == "local":
        return None
    if spec.serving.image_uri:
        return spec.serving.image_uri
    from lmiflow.targets.sagemaker import lmi_image_uri

    framework = "djl-tensorrtllm" if spec.serving.backend == "trtllm" else "djl-lmi"
    try:
        return lmi_image_uri(spec.target.region, spec.serving.image_version, framework)
    except ValueError as exc:
        raise UserInputError("serving.image_version", str(exc).split(": ", 1)[-1]) from None


def names_for(spec: DeploymentSpec, properties: str, image: str | None, p: Plan) -> Names:
    """Names from a hash of everything that makes the deployment what it is."""
    blob = json.dumps({
        "properties": properties, "image": image, "instance": p.chosen.instance_type,
        "count": p.chosen.instance_count, "target": spec.target.kind,
    }, sort_keys=True)
    h = hashlib.sha256(blob.encode()).hexdigest()[:8]
    from lmiflow.targets.sagemaker import resource_names

    n = resource_names(spec.name, h)
    return Names(production=spec.name, spec_hash=h, **n)


def prepare_serving(spec: DeploymentSpec, model: ResolvedModel, p: Plan
                    ) -> tuple[str, str | None, Names]:
    """serving.properties text, the image URI and the candidate's names: what one candidate
    is, shared by the Prefect task and the dry run."""
    text = render_serving_properties(spec, model, p)
    image = image_uri(spec)
    return text, image, names_for(spec, text, image, p)


CANDIDATE_RE = r"{name}-(c|ec|m)-[0-9a-f]{{8}}"


def is_candidate_resource(production: str, resource: str) -> bool:
    return re.fullmatch(CANDIDATE_RE.format(name=re.escape(production)), resource) is not None


def tags_for(names: Names, run_id: str | None) -> dict[str, str]:
    return {"project": PROJECT_TAG, "lmiflow:endpoint": names.production,
            "lmiflow:spec-hash": names.spec_hash, "lmiflow:run-id": run_id or "none"}


def smoke_payload(spec: DeploymentSpec) -> dict:
    return {"inputs": spec.smoke_test.prompt,
            "parameters": {"max_new_tokens": spec.smoke_test.max_new_tokens, "details": True}}


def check_smoke_response(body: bytes) -> tuple[bool, str, str | None]:
    """(passed, generated text, why not). LMI answers a dict, or a one-item list of dicts."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False, body[:200].decode("utf-8", "replace"), "response is not JSON"
    if isinstance(data, list) and data:
        data = data[0]
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
        concurrency=b.concurrency, requests=b.requests, warmup=b.warmup_requests,
        max_new_tokens=b.max_new_tokens or min(w.max_output_tokens, 64),
        input_tokens=b.input_tokens or max(1, w.max_input_tokens // 4),
        timeout_s=b.timeout_s,
    )
