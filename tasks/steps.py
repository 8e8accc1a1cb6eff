"""One Prefect task per pipeline step: call the pure pipeline or a target, leave one artifact
keyed `<endpoint>-<step>`, return a typed result. Retries only for transient faults, with
jittered backoff (tasks.common); side-effecting steps are never cached."""

from __future__ import annotations

import json
import time
from functools import lru_cache

from lmiflow.sizing.planner import Plan
from lmiflow.tasks.common import RETRIES, StepFailed, artifact_key, report_progress, retry_transient
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from lmiflow import pipeline
from lmiflow.model_source import ResolvedModel
from lmiflow.pipeline import Names
from lmiflow.report.redact import redact_text
from lmiflow.spec import DeploymentSpec
from lmiflow.targets.base import EndpointStatus, EndpointVariant, TrafficPolicy, WaitTimeout


def step_task(name: str, retries: int = RETRIES):
    return task(name=name, retries=retries, retry_delay_seconds=0,
                retry_condition_fn=retry_transient, cache_policy=NO_CACHE)


def _md(spec: DeploymentSpec, step: str, text: str) -> None:
    create_markdown_artifact(key=artifact_key(spec.name, step), markdown=redact_text(text),
                             description=f"{spec.name}: {step}")


def _gb(b: float | None) -> str:
    return "-" if b is None else f"{b / 1e9:.2f} GB"


@lru_cache(maxsize=8)
def _target(kind: str, region, role_arn, s3_uri, block, state_dir):
    from lmiflow.targets import make_target

    if kind == "local":
        return make_target("local", state_dir=state_dir)
    return make_target("sagemaker", region=region, role_arn=role_arn, s3_uri=s3_uri,
                       credentials_block=block)


def target_for(spec: DeploymentSpec):
    """One target per process and config (credentials come from the block, not a client)."""
    import os

    t = spec.target
    return _target(t.kind, t.region, t.role_arn, t.s3_uri, t.aws_credentials_block,
                   os.environ.get("LMIFLOW_STATE_DIR"))


# ---- planning --------------------------------------------------------------------------------

@step_task("fetch_config")
def fetch_config(spec: DeploymentSpec) -> ResolvedModel:
    m = pipeline.fetch_config(spec)
    s = m.spec
    _md(spec, "fetch_config", f"# config.json of `{spec.model.id}`\n\nsource: `{m.source}`\n\n"
        f"| field | value |\n|---|---|\n| model_type | {s.model_type} |\n"
        f"| layers | {s.num_layers} |\n| hidden | {s.hidden_size} |\n"
        f"| heads / kv heads | {s.num_attention_heads} / {s.num_kv_heads} |\n"
        f"| parameters | {s.parameters:,} ({s.parameter_source}) |\n"
        f"| active parameters | {s.active_parameters:,} |\n" + (f"\n{m.note}\n" if m.note else ""))
    return m


@step_task("compute_memory", retries=0)
def compute_memory(spec: DeploymentSpec, model: ResolvedModel) -> dict:
    mem = pipeline.compute_memory(spec, model)
    terms = "\n".join(f"| {k} | {_gb(v)} |" for k, v in mem["overhead_terms"].items())
    _md(spec, "compute_memory",
        f"# Memory, whole model (unsharded)\n\n| component | bytes |\n|---|---|\n"
        f"| weights ({mem['dtypes']['weights']}) | {_gb(mem['weights_bytes'])} |\n"
        f"| KV cache ({mem['dtypes']['kv_cache']}) | {_gb(mem['kv_cache_bytes'])} |\n"
        f"| overhead | {_gb(mem['overhead_bytes'])} |\n| **total** | "
        f"**{_gb(mem['total_bytes'])}** |\n\n## Overhead terms\n\n| term | bytes |\n|---|---|\n"
        f"{terms}\n")
    return mem


@step_task("choose_instance", retries=0)
def choose_instance(spec: DeploymentSpec, model: ResolvedModel) -> Plan:
    p = pipeline.choose_instance(spec, model)
    rows = [{"rank": o.rank, "instance_type": o.instance_type, "tp": o.tensor_parallel_degree,
             "copies": o.model_copies, "fits": o.fits, "per_gpu_gb": round(
                 o.per_gpu_required_bytes / 1e9, 2), "usd_per_hour": o.usd_per_hour,
             "max_concurrency": o.max_concurrency, "reason": o.reason} for o in p.options]
    create_table_artifact(key=artifact_key(spec.name, "choose-instance"), table=rows,
                          description=f"{spec.name}: options ranked; chosen: "
                                      f"{p.chosen.instance_type} — {p.chosen_reason}")
    return p


@step_task("render_serving_properties", retries=0)
def render_serving_properties(spec: DeploymentSpec, model: ResolvedModel, p: Plan
                              ) -> tuple[str, str | None, Names]:
    text, image, names = pipeline.prepare_serving(spec, model, p)
    _md(spec, "render_serving_properties",
        f"# serving.properties\n\n```properties\n{text}```\n\nimage: `{image or 'local'}`\n\n"
        f"candidate: `{names.endpoint}` (spec hash {names.spec_hash})\n")
    return text, image, names


# ---- endpoint lifecycle ----------------------------------------------------------------------

def production_in_use(target, production: str) -> set[str]:
    """The endpoint config and model production serves (empty when there is no production)."""
    prod = target.describe(production)
    if prod is None or not prod.config_name:
        return set()
    model = _config_model(target, prod.config_name)
    return {prod.config_name, model} if model else {prod.config_name}


def remove_leftovers(target, production: str) -> list[str]:
    """Candidate resources of this endpoint that an interrupted run left behind (not serving
    production): delete them so the run starts clean. Returns what was removed."""
    in_use = production_in_use(target, production)
    found = target.list_resources(f"{production}-")
    removed = []
    for kind, delete in (("endpoints", target.delete_endpoint),
                         ("endpoint_configs", target.delete_endpoint_config),
                         ("models", target.delete_model)):
        for name in found.get(kind, []):
            if (pipeline.is_candidate_resource(production, name) and name not in in_use
                    and delete(name)):
                removed.append(f"{kind[:-1]} {name}")
    return removed


def _config_model(target, config_name: str) -> str | None:
    fn = getattr(target, "config_model_name", None)
    return fn(config_name) if fn else None


@step_task("create_model")
def create_model(spec: DeploymentSpec, names: Names, properties: str, image: str | None,
                 tags: dict[str, str]) -> dict:
    log = get_run_logger()
    target = target_for(spec)
    removed = remove_leftovers(target, spec.name)
    if removed:
        log.warning("removed leftovers of an earlier run: %s", ", ".join(removed))
    env: dict[str, str] = {}
    staged = pipeline.staged_properties(spec, properties)  # secrets filled in, never logged
    if spec.target.kind == "sagemaker" and spec.target.packaging == "env":
        from lmiflow.serving.properties import parse, to_env

        env, model_data = to_env(parse(staged)), ""
    else:
        model_data = target.stage(names.model, {"serving.properties": staged})
    target.create_model(names.model, model_data, image, env, tags)
    _md(spec, "create_model", f"# Model `{names.model}`\n\ndata: `{model_data or 'env'}`\n\n"
        f"image: `{image or 'local'}`\n" + (f"\nremoved leftovers: {', '.join(removed)}\n"
                                          if removed else ""))
    return {"model": names.model, "model_data": model_data, "removed_leftovers": removed}


@step_task("configure_endpoint")
def configure_endpoint(spec: DeploymentSpec, names: Names, p: Plan, tags: dict[str, str]
                       ) -> EndpointVariant:
    chosen = p.chosen
    variant = EndpointVariant(instance_type=chosen.instance_type,
                              instance_count=chosen.instance_count)
    if spec.target.kind == "sagemaker":
        from lmiflow.targets.sagemaker import sizing_timeouts, volume_size_supported

        weights = int(p.memory.weights_bytes)
        volume, download, startup = sizing_timeouts(weights)
        variant.model_data_download_timeout_s = download
        variant.container_startup_health_check_timeout_s = startup
        if volume_size_supported(chosen.instance_type):
            variant.volume_size_gb = volume
    target_for(spec).create_endpoint_config(names.endpoint_config, names.model, variant, tags)
    _md(spec, "configure_endpoint", f"# Endpoint config `{names.endpoint_config}`\n\n"
        f"```json\n{json.dumps(variant.model_dump(exclude_none=True), indent=2)}\n```\n")
    return variant


def wait_in_service(spec: DeploymentSpec, endpoint: str, step: str) -> EndpointStatus:
    """Wait (bounded) for InService, logging each status change and keeping a progress
    artifact; Failed raises StepFailed with the platform's reason."""
    log = get_run_logger()
    timeout = spec.promotion.endpoint_timeout_s
    progress = create_progress_artifact(progress=0.0, key=artifact_key(spec.name, step + "-wait"),
                                        description=f"waiting for {endpoint}")

    def on_status(st: EndpointStatus, elapsed: float) -> None:
        log.info("%s: %s after %.0f s", endpoint, st.status, elapsed)
        frac = 1.0 if st.status == "InService" else min(0.95, elapsed / timeout)
        update_progress_artifact(progress, progress=frac * 100)
        report_progress(step, frac, f"{endpoint}: {st.status} ({elapsed:.0f} s)")

    try:
        st = target_for(spec).wait(endpoint, timeout, on_status=on_status)
    except WaitTimeout as exc:
        raise StepFailed(f"{endpoint} not InService within {timeout:.0f} s: {exc}") from None
    update_progress_artifact(progress, progress=100.0)
    if st.status != "InService":
        raise StepFailed(f"{endpoint} is {st.status}: {st.failure_reason or 'no reason given'}")
    return st


@step_task("create_endpoint")
def create_endpoint(spec: DeploymentSpec, names: Names, tags: dict[str, str]) -> dict:
    t0 = time.monotonic()
    target_for(spec).create_endpoint(names.endpoint, names.endpoint_config, tags)
    st = wait_in_service(spec, names.endpoint, "create_endpoint")
    secs = time.monotonic() - t0
    _md(spec, "create_endpoint", f"# Candidate `{names.endpoint}`\n\nInService after "
        f"{secs:.1f} s\n" + (f"\nURL: `{st.url}`\n" if st.url else ""))
    return {"endpoint": names.endpoint, "status": st.status, "seconds": secs}


# ---- testing ---------------------------------------------------------------------------------

@step_task("smoke_test")
def smoke_test(spec: DeploymentSpec, endpoint: str, step: str = "smoke_test") -> dict:
    t0 = time.monotonic()
    body = target_for(spec).invoke(endpoint, pipeline.smoke_payload(spec))
    passed, output, why = pipeline.check_smoke_response(body)
    result = {"passed": passed, "output": output, "endpoint": endpoint,
              "seconds": time.monotonic() - t0, "error": why}
    _md(spec, step, f"# Smoke test of `{endpoint}`: {'passed' if passed else 'FAILED'}\n\n"
        f"prompt: `{spec.smoke_test.prompt}`\n\noutput:\n\n```\n{output}\n```\n"
        + (f"\nwhy: {why}\n" if why else ""))
    if not passed:
        raise StepFailed(f"smoke test of {endpoint} failed: {why}")
    return result


@step_task("benchmark", retries=0)
def benchmark(spec: DeploymentSpec, endpoint: str, p: Plan, tokenizer_dir: str | None) -> dict:
    from lmiflow.bench.loadgen import bench_endpoint

    cfg = pipeline.load_config(spec).model_copy(update={
        "usd_per_hour": (p.chosen.usd_per_hour / p.chosen.instance_count
                         if p.chosen.usd_per_hour else None),
        "instances": p.chosen.instance_count})
    levels = cfg.concurrency
    progress = create_progress_artifact(progress=0.0, key=artifact_key(spec.name, "benchmark"),
                                        description=f"benchmarking {endpoint}")
    total = len(levels)

    def on_progress(level: int, done: int, of: int) -> None:
        i = levels.index(level) if level in levels else 0
        frac = (i + done / max(of, 1)) / total
        update_progress_artifact(progress, progress=frac * 100)
        report_progress("benchmark", frac, f"concurrency {level}: {done}/{of}")

    tokenizer = _tokenizer(tokenizer_dir)
    result = bench_endpoint(target_for(spec), endpoint, cfg, tokenizer=tokenizer,
                            gates=spec.gates, on_progress=on_progress)
    update_progress_artifact(progress, progress=100.0)
    data = result.model_dump(mode="json")
    rows = []
    for lv in data["levels"]:
        rows.append({"concurrency": lv["concurrency"], "requests": lv["requests"],
                     "errors": lv["errors"], "ttft_p50_ms": lv["ttft_ms"]["p50"],
                     "ttft_p95_ms": lv["ttft_ms"]["p95"], "tpot_p50_ms": lv["tpot_ms"]["p50"],
                     "e2e_p95_ms": lv["e2e_ms"]["p95"],
                     "output_tokens_per_s": lv["output_tokens_per_s"],
                     "usd_per_1m_output_tokens": lv.get("usd_per_1m_output_tokens")})
    create_table_artifact(key=artifact_key(spec.name, "benchmark-levels"), table=rows,
                          description=f"{spec.name}: benchmark of {endpoint}")
    return data


def _tokenizer(path: str | None):
    """The model's own tokenizer for exact prompt lengths, when it is on disk."""
    if not path:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception:
        return None


@step_task("gate", retries=0)
def gate(spec: DeploymentSpec, bench: dict, baseline: dict | None) -> dict:
    from lmiflow.bench.gates import evaluate
    from lmiflow.bench.metrics import BenchResult

    verdict = evaluate(spec.gates, BenchResult.model_validate(bench),
                       BenchResult.model_validate(baseline) if baseline else None,
                       spec.regression.max_regression_pct)
    data = verdict.model_dump(mode="json")
    lines = [f"# Gate: {'PASSED' if verdict.passed else 'REJECTED'}\n",
             "| check | c | observed | op | threshold | ok |", "|---|---|---|---|---|---|"]
    for c in data["checks"]:
        lines.append(f"| {c['kind']} {c['metric']} {c['stat']} | {c.get('concurrency')} | "
                     f"{c['observed']} | {c['op']} | {c['threshold']} | "
                     f"{'✅' if c['passed'] else '❌'} |")
    lines += [f"\n- {n}" for n in data.get("notes", [])]
    _md(spec, "gate", "\n".join(lines))
    return data


# ---- promotion and cleanup -------------------------------------------------------------------

@step_task("promote")
def promote(spec: DeploymentSpec, names: Names, tags: dict[str, str]) -> dict:
    """Candidate config becomes production: create production on a first deploy, else a
    blue/green update; then smoke-test production, delete the candidate endpoint and the
    configuration production ran before. Safe to retry: a second try finds production already
    on the new config and only finishes the cleanup."""
    log = get_run_logger()
    target = target_for(spec)
    prod = target.describe(spec.name)
    previous = prod.config_name if prod else None
    if prod is None:
        target.create_endpoint(spec.name, names.endpoint_config, tags)
        action = "created"
    elif prod.config_name == names.endpoint_config and prod.status == "InService":
        action = "already serving this config"
    else:
        pr = spec.promotion
        policy = TrafficPolicy(type=pr.strategy, wait_interval_s=pr.wait_interval_s,
                               canary_size_pct=pr.canary_size_pct if pr.strategy == "CANARY"
                               else None,
                               linear_step_pct=pr.linear_step_pct if pr.strategy == "LINEAR"
                               else None, alarms=pr.alarms)
        target.update_endpoint(spec.name, names.endpoint_config, policy)
        action = f"updated ({pr.strategy})"
    st = wait_in_service(spec, spec.name, "promote")
    if st.config_name and st.config_name != names.endpoint_config:
        raise StepFailed(f"{spec.name} still serves {st.config_name} after the update "
                         "(rolled back?)")
    smoke = smoke_test.fn(spec, spec.name, step="promote-smoke-test")
    # Everything of this endpoint that production no longer uses: the candidate endpoint and
    # the config and model production ran before (also those of an earlier interrupted try).
    removed = remove_leftovers(target, spec.name)
    log.info("promoted %s: %s; removed %s", spec.name, action, ", ".join(removed) or "nothing")
    _md(spec, "promote", f"# Promoted `{spec.name}`\n\n{action}: now serves "
        f"`{names.endpoint_config}` (was `{previous or 'nothing'}`)\n\nremoved: "
        f"{', '.join(removed) or 'nothing'}\n\nproduction smoke test: {smoke['output']!r}\n")
    return {"action": action, "previous_config": previous, "removed": removed,
            "production_smoke_test": smoke}


@step_task("cleanup")
def cleanup_candidate(spec: DeploymentSpec, names: Names) -> list[str]:
    """Delete the candidate's endpoint, config and model unless production uses them."""
    target = target_for(spec)
    in_use = production_in_use(target, spec.name)
    removed = []
    if target.delete_endpoint(names.endpoint):
        removed.append(f"endpoint {names.endpoint}")
    if names.endpoint_config not in in_use and target.delete_endpoint_config(
            names.endpoint_config):
        removed.append(f"endpoint config {names.endpoint_config}")
    if names.model not in in_use and target.delete_model(names.model):
        removed.append(f"model {names.model}")
    return removed
