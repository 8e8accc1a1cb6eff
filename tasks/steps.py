"""One Prefect task per pipeline step: one call into the pipeline or the lifecycle (the logic
lives there, without Prefect), one artifact keyed `<endpoint>-<step>`, a typed result, and
log lines. Retries only for transient faults, with jittered backoff (tasks.common);
side-effecting steps are never cached."""

from __future__ import annotations

import json
from pathlib import Path

from lmiflow.sizing.planner import Plan
from lmiflow.sizing.units import gb
from lmiflow.tasks.common import RETRIES, artifact_key, report_progress, retry_transient
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from lmiflow import lifecycle, pipeline
from lmiflow.bench.gates import Verdict
from lmiflow.bench.metrics import BenchResult
from lmiflow.lifecycle import CreatedEndpoint, CreatedModel
from lmiflow.model_source import ResolvedModel
from lmiflow.pipeline import Candidate, MemoryEstimate, Names, target_for
from lmiflow.redact import redact_text
from lmiflow.report.digest import digest
from lmiflow.report.markdown import render_section
from lmiflow.report.model import (
    PredictedVsMeasured,
    Promotion,
    PromotionPlan,
    RunReport,
    SmokeTest,
)
from lmiflow.report.outcome import ProductionState, explain_check, figure, sig
from lmiflow.report.sections import calibration_section
from lmiflow.run_record import ReportNotWritten, write_report_somewhere
from lmiflow.spec import DeploymentSpec
from lmiflow.targets.aws_requests import AwsRequest
from lmiflow.targets.base import EndpointLock, EndpointStatus, EndpointVariant
from lmiflow.targets.staging import Progress, StagingReport
from lmiflow.targets.weights import WeightsPlan


def step_task(name: str, retries: int = RETRIES):
    return task(name=name, retries=retries, retry_delay_seconds=0,
                retry_condition_fn=retry_transient, cache_policy=NO_CACHE)


def _md(spec: DeploymentSpec, step: str, text: str) -> None:
    create_markdown_artifact(key=artifact_key(spec.name, step), markdown=redact_text(text),
                             description=f"{spec.name}: {step}")


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
def compute_memory(spec: DeploymentSpec, model: ResolvedModel) -> MemoryEstimate:
    mem = pipeline.compute_memory(spec, model)
    terms = "\n".join(f"| {k} | {gb(v)} |" for k, v in mem.overhead_terms.items())
    _md(spec, "compute_memory",
        f"# Memory, whole model (unsharded; GB = 10^9 bytes)\n\n| component | size |\n"
        f"|---|---|\n"
        f"| weights ({mem.dtypes.weights}) | {gb(mem.weights_bytes)} |\n"
        f"| KV cache ({mem.dtypes.kv_cache}) | {gb(mem.kv_cache_bytes)} |\n"
        f"| overhead | {gb(mem.overhead_bytes)} |\n| **total** | "
        f"**{gb(mem.total_bytes)}** |\n\n## Overhead terms\n\n| term | size |\n|---|---|\n"
        f"{terms}\n")
    return mem


@step_task("choose_instance", retries=0)
def choose_instance(spec: DeploymentSpec, model: ResolvedModel) -> Plan:
    p = pipeline.choose_instance(spec, model, target_for(spec))
    c = p.chosen
    get_run_logger().info("chose %s x%d (%dx %s, tp %d, %d model copies): %s", c.instance_type,
                          c.instance_count, c.gpu_count, c.accelerator,
                          c.tensor_parallel_degree, c.model_copies, p.chosen_reason)
    rows = [{"rank": o.rank, "instance": o.instance_type, "count": o.instance_count,
             "GPUs": f"{o.gpu_count}x {o.accelerator}", "tp": o.tensor_parallel_degree,
             "copies": o.model_copies, "fits": o.fits,
             "GB per GPU": gb(o.per_gpu_required_bytes, unit=False),
             "TTFT p50": figure("ttft_ms", o.predicted.ttft_ms) if o.predicted else "-",
             "TPOT p50": figure("tpot_ms", o.predicted.tpot_ms) if o.predicted else "-",
             "$/h": "-" if o.usd_per_hour is None else f"{o.usd_per_hour:.2f}",
             "reason": o.reason} for o in p.options]
    create_table_artifact(key=artifact_key(spec.name, "choose-instance"), table=rows,
                          description=f"{spec.name}: options ranked (TTFT, TPOT predicted; "
                                      f"GB = 10^9 bytes); chosen: {c.instance_type} — "
                                      f"{p.chosen_reason}")
    return p


@step_task("render_serving_properties", retries=0)
def render_serving_properties(spec: DeploymentSpec, model: ResolvedModel, p: Plan
                              ) -> Candidate:
    c = pipeline.prepare_serving(spec, model, p, target_for(spec))
    _md(spec, "render_serving_properties",
        f"# serving.properties\n\n```properties\n{c.properties}```\n\nimage: "
        f"`{c.image_uri or 'local'}`\n\ncandidate: `{c.names.endpoint}` (spec hash "
        f"{c.names.spec_hash})\n")
    return c


def endpoint_lock(spec: DeploymentSpec, run_id: str | None) -> EndpointLock:
    """Held for the whole run (not a task: it spans them)."""
    return target_for(spec).endpoint_lock(spec.name, run_id)


# ---- the weights ------------------------------------------------------------------------------

@step_task("stage_weights")
def stage_weights(spec: DeploymentSpec, weights: WeightsPlan) -> StagingReport | None:
    """Copy the weights into S3 when the plan says so (resumable: a retry skips what is
    there), with a progress artifact and a line in the log every 10 %."""
    log = get_run_logger()
    target = target_for(spec)
    plan_text = "\n".join(f"- {line}" for line in weights.summary())
    if weights.delivery != "staged":
        _md(spec, "stage_weights", f"# Weights: nothing to stage\n\n{plan_text}\n")
        return None
    progress = create_progress_artifact(progress=0.0, key=artifact_key(spec.name,
                                                                       "stage-weights"),
                                        description=f"staging {weights.source.id}")
    logged = [-10.0]

    def on_progress(p: Progress) -> None:
        update_progress_artifact(progress, progress=p.fraction * 100)
        report_progress("stage_weights", p.fraction, p.text())
        if p.fraction * 100 - logged[0] >= 10 or p.fraction >= 1:
            logged[0] = p.fraction * 100
            log.info("staging %s: %s", weights.source.id, p.text())

    result = lifecycle.stage_weights(target, spec, weights, on_progress)
    rows = "\n".join(f"| {f.name} | {f.size / 1e6:,.1f} MB | {f.status} | {f.seconds:.1f} |"
                     for f in result.files)
    _md(spec, "stage_weights", f"# Weights staged to `{result.destination}`\n\n"
        f"{result.summary()}\n\n{plan_text}\n\n| file | size | status | seconds |\n"
        f"|---|---|---|---|\n{rows}\n")
    return result


# ---- the candidate ---------------------------------------------------------------------------

@step_task("check_production")
def check_production(spec: DeploymentSpec) -> EndpointStatus | None:
    """Before anything is created: a Failed production stops the run unless it may be
    replaced (promotion.replace_failed)."""
    prod = lifecycle.check_production(target_for(spec), spec)
    if prod is not None and prod.status == "Failed":
        get_run_logger().warning("production %s is Failed (%s): this run replaces it",
                                 spec.name, redact_text(prod.failure_reason or "no reason"))
    return prod


@step_task("preflight")
def preflight(spec: DeploymentSpec, candidate: Candidate,
              requests: list[AwsRequest] | None = None) -> PromotionPlan | None:
    plan = lifecycle.preflight(target_for(spec), candidate, requests or ())
    if plan is not None:
        peak = ", ".join(f"{n} x {t}" for t, n in plan.peak_instances.items())
        _md(spec, "preflight", f"# Before anything is created\n\nrollback alarms: "
            f"{', '.join(plan.alarms) or 'none'} (all exist)\n\npeak fleet: {peak} "
            f"({plan.peak_assumption}), within the account's quotas\n")
    return plan


@step_task("create_model")
def create_model(spec: DeploymentSpec, candidate: Candidate, tags: dict[str, str]
                 ) -> CreatedModel:
    created = lifecycle.create_model(target_for(spec), spec, candidate, tags)
    removed = created.removed_leftovers
    if removed:
        get_run_logger().warning("removed leftovers of an earlier run: %s", ", ".join(removed))
    _md(spec, "create_model", f"# Model `{created.model}`\n\ndata: "
        f"`{created.model_data or 'env'}`\n\nimage: `{candidate.image_uri or 'local'}`\n"
        + (f"\nremoved leftovers: {', '.join(removed)}\n" if removed else ""))
    return created


@step_task("configure_endpoint")
def configure_endpoint(spec: DeploymentSpec, candidate: Candidate, p: Plan,
                       tags: dict[str, str]) -> EndpointVariant:
    names = candidate.names
    variant = lifecycle.configure_endpoint(target_for(spec), candidate, p, tags)
    _md(spec, "configure_endpoint", f"# Endpoint config `{names.endpoint_config}`\n\n"
        f"```json\n{json.dumps(variant.model_dump(exclude_none=True), indent=2)}\n```\n")
    return variant


class _WaitProgress:
    """Logs each status change of a wait and keeps a progress artifact and the CLI's bar."""

    def __init__(self, spec: DeploymentSpec, endpoint: str, step: str):
        self.log = get_run_logger()
        self.endpoint, self.step = endpoint, step
        self.timeout = spec.promotion.endpoint_timeout_s
        self.id = create_progress_artifact(progress=0.0,
                                           key=artifact_key(spec.name, step + "-wait"),
                                           description=f"waiting for {endpoint}")

    def __call__(self, st: EndpointStatus, elapsed: float) -> None:
        self.log.info("%s: %s after %.0f s", self.endpoint, st.status, elapsed)
        frac = 1.0 if st.status == "InService" else min(0.95, elapsed / self.timeout)
        update_progress_artifact(self.id, progress=frac * 100)
        report_progress(self.step, frac, f"{self.endpoint}: {st.status} ({elapsed:.0f} s)")


@step_task("create_endpoint")
def create_endpoint(spec: DeploymentSpec, names: Names, tags: dict[str, str]
                    ) -> CreatedEndpoint:
    progress = _WaitProgress(spec, names.endpoint, "create_endpoint")
    ep = lifecycle.create_endpoint(target_for(spec), names, tags,
                                   spec.promotion.endpoint_timeout_s, progress)
    update_progress_artifact(progress.id, progress=100.0)
    _md(spec, "create_endpoint", f"# Candidate `{names.endpoint}`\n\nInService after "
        f"{ep.seconds:.1f} s\n" + (f"\nURL: `{ep.url}`\n" if ep.url else ""))
    return ep


# ---- testing ---------------------------------------------------------------------------------

@step_task("smoke_test")
def smoke_test(spec: DeploymentSpec, endpoint: str) -> SmokeTest:
    result = lifecycle.smoke_test(target_for(spec), spec, endpoint)
    _md(spec, "smoke_test", f"# Smoke test of `{endpoint}`: "
        f"{'passed' if result.passed else 'FAILED'}\n\nprompt: `{spec.smoke_test.prompt}`\n\n"
        f"output:\n\n```\n{result.output}\n```\n"
        + (f"\nwhy: {result.error}\n" if result.error else ""))
    return lifecycle.require_passed(result)


@step_task("benchmark", retries=0)
def benchmark(spec: DeploymentSpec, endpoint: str, p: Plan, tokenizer_dir: str | None
              ) -> BenchResult:
    levels = spec.benchmark.concurrency
    progress = create_progress_artifact(progress=0.0, key=artifact_key(spec.name, "benchmark"),
                                        description=f"benchmarking {endpoint}")

    def on_progress(level: int, done: int, of: int) -> None:
        i = levels.index(level) if level in levels else 0
        frac = (i + done / max(of, 1)) / len(levels)
        update_progress_artifact(progress, progress=frac * 100)
        report_progress("benchmark", frac, f"concurrency {level}: {done}/{of}")

    result = lifecycle.benchmark(target_for(spec), spec, endpoint, p, tokenizer_dir,
                                 on_progress)
    update_progress_artifact(progress, progress=100.0)
    # Rounded to what one run on a shared machine supports; report.json has full precision.
    rows = [{"concurrency": lv.concurrency, "requests": lv.requests, "errors": lv.errors,
             "TTFT p50": figure("ttft_ms", lv.ttft_ms.p50),
             "TTFT p95": figure("ttft_ms", lv.ttft_ms.p95),
             "TPOT p50": figure("tpot_ms", lv.tpot_ms.p50),
             "E2E p95": figure("e2e_ms", lv.e2e_ms.p95),
             "output tokens/s": "-" if lv.output_tokens_per_s is None
             else sig(lv.output_tokens_per_s),
             "$/1M output tokens": "-" if lv.usd_per_1m_output_tokens is None
             else f"${sig(lv.usd_per_1m_output_tokens)}"} for lv in result.levels]
    create_table_artifact(key=artifact_key(spec.name, "benchmark-levels"), table=rows,
                          description=f"{spec.name}: benchmark of {endpoint}")
    get_run_logger().info("benchmark of %s: %s", endpoint, "; ".join(
        f"c={r['concurrency']}: TTFT p50 {r['TTFT p50']}, {r['output tokens/s']} tokens/s"
        for r in rows))
    return result


@step_task("record_calibration")
def record_calibration(spec: DeploymentSpec, model: ResolvedModel, p: Plan, bench: BenchResult,
                       image_uri: str | None, run: str) -> PredictedVsMeasured:
    """The benchmark next to the plan's prediction, appended to the target's calibration
    store. Retried on transient faults: each try rereads the store and writes it whole."""
    result = lifecycle.record_calibration(target_for(spec), model.spec, p, bench, run=run,
                                          model_id=spec.model.id, image_uri=image_uri)
    log = get_run_logger()
    for note in result.notes:
        log.info("calibration: %s", note)
    if result.recorded:
        log.info("calibration: %d record(s) of %s / %s appended to %s", result.recorded,
                 result.accelerator, result.engine, result.store)
    _md(spec, "calibration", render_section(calibration_section(result)))
    return result


@step_task("load_baseline")
def load_baseline(spec: DeploymentSpec) -> BenchResult | None:
    baseline = lifecycle.load_baseline(target_for(spec), spec.name)
    _md(spec, "baseline", f"# Baseline of `{spec.name}`\n\n" + (
        "production's last promoted benchmark: "
        + ", ".join(f"c={lv.concurrency}: {lv.output_tokens_per_s or 0:.0f} tok/s"
                    for lv in baseline.levels) if baseline else "none yet (first promotion)"))
    return baseline


@step_task("gate", retries=0)
def gate(spec: DeploymentSpec, bench: BenchResult, baseline: BenchResult | None) -> Verdict:
    verdict = lifecycle.gate(target_for(spec), spec, bench, baseline)
    failed = [c for c in verdict.checks if not c.passed]
    log = get_run_logger()
    if verdict.passed:
        log.info("gate passed: %d checks", len(verdict.checks))
    else:
        log.info("gate rejected the candidate: %d of %d checks failed",
                 len(failed), len(verdict.checks))
    for c in failed:  # the run's story, at INFO: the CLI prints its own summary of it
        log.info("failed: %s", explain_check(c))
    lines = [f"# Gate: {'passed' if verdict.passed else 'rejected'}\n",
             "| | kind | check |", "|---|---|---|"]
    lines += [f"| {'✅' if c.passed else '❌'} | {c.kind} | {explain_check(c)} |"
              for c in verdict.checks]
    lines += [f"\n- {n}" for n in verdict.notes]
    _md(spec, "gate", "\n".join(lines))
    return verdict


# ---- production ------------------------------------------------------------------------------

@step_task("promote")
def promote(spec: DeploymentSpec, names: Names, tags: dict[str, str]) -> Promotion:
    """Safe to retry: a second try finds production on the new config and finishes cleanup."""
    progress = _WaitProgress(spec, spec.name, "promote")
    result = lifecycle.promote(target_for(spec), spec, names, tags, progress)
    update_progress_artifact(progress.id, progress=100.0)
    removed = ", ".join(result.removed) or "nothing"
    get_run_logger().info("promoted %s: %s; removed %s", spec.name, result.action, removed)
    _md(spec, "promote", f"# Promoted `{spec.name}`\n\n{result.action}: now serves "
        f"`{names.endpoint_config}` (was `{result.previous_config or 'nothing'}`)\n\nremoved: "
        f"{removed}\n\nproduction smoke test: " + (
            repr(result.production_smoke_test.output) if result.production_smoke_test
            else "not run (no copy running: production starts on its next request)") + "\n")
    return result


@step_task("autoscale")
def autoscale(spec: DeploymentSpec, candidate: Candidate) -> list[str]:
    """Registering again updates the scaling in place, so a retry is safe."""
    done = lifecycle.autoscale(target_for(spec), spec.name, candidate.autoscaling)
    a = candidate.autoscaling
    if a is not None:
        get_run_logger().info("autoscaling %s: %d..%d instances, target %d per copy",
                              spec.name, a.min_instances, a.max_instances, a.target_per_copy)
        _md(spec, "autoscale", f"# Autoscaling of `{spec.name}`\n\n"
            + "\n".join(f"- {line}" for line in [*done, *a.why]))
    return done


@step_task("save_baseline")
def save_baseline(spec: DeploymentSpec, bench: BenchResult) -> str | None:
    where = lifecycle.save_baseline(target_for(spec), spec.name, bench)
    get_run_logger().info("baseline of %s saved to %s", spec.name, where or "nowhere")
    _md(spec, "baseline", f"# Baseline of `{spec.name}`\n\nthis run's benchmark, saved to "
        f"`{where or 'nowhere (no store configured)'}`\n")
    return where


@step_task("cleanup")
def cleanup_candidate(spec: DeploymentSpec, names: Names) -> list[str]:
    """Delete the candidate's endpoint, config and model unless production uses them."""
    removed = lifecycle.cleanup_candidate(target_for(spec), names)
    get_run_logger().info("removed candidate resources: %s", ", ".join(removed) or "none existed")
    _md(spec, "cleanup", "# Candidate removed\n\n" + (
        "\n".join(f"- {r}" for r in removed) or "nothing existed"))
    return removed


@step_task("production")
def production_state(spec: DeploymentSpec) -> ProductionState:
    """Production as the run leaves it (what a rejection or failure left unchanged)."""
    return lifecycle.production_state(target_for(spec), spec.name)


@step_task("teardown")
def teardown(spec: DeploymentSpec) -> list[str]:
    """Delete production and every candidate resource of this endpoint, and the files only
    they used; what is kept (reports, shared weights) is said with its reason."""
    kept: list[str] = []
    removed = lifecycle.teardown(target_for(spec), spec.name, kept)
    get_run_logger().info("teardown of %s removed: %s", spec.name,
                          ", ".join(removed) or "nothing")
    _md(spec, "teardown", "# Teardown\n\n" + "\n".join(
        [f"- {r}" for r in removed] + [f"- kept {k}" for k in kept]))
    return removed


@task(name="report", retries=0, cache_policy=NO_CACHE)
def report(run_report: RunReport, report_dir: str | None, spec: DeploymentSpec | None = None
           ) -> Path | None:
    """Write report.json / .md / .html; keep them where the target's people look (S3 for
    SageMaker); put their substance in a Markdown artifact. Never fails the run: a report
    directory that cannot take the files sends them to a fallback directory, and the artifact
    and the upload are conveniences."""
    from lmiflow.report.writer import report_plots

    log = get_run_logger()
    plots = None
    try:
        plots = report_plots(run_report)  # drawn once: for report.html and the artifact
        path, why = write_report_somewhere(run_report, report_dir, plots)
    except ReportNotWritten as exc:
        log.error("no report could be written: %s", redact_text(str(exc)))
        return None
    except Exception as exc:  # a rendering bug must not undo what the run did either
        log.error("the report could not be rendered: %s", redact_text(str(exc)))
        return None
    if why:
        log.warning("report not written where asked (%s): written to %s", redact_text(why),
                    path)
    name = run_report.endpoint
    location, url = str(path.with_name("report.html").resolve()), None
    if spec is not None:
        try:
            files = {p.name: p.read_bytes() for p in sorted(path.parent.glob("report.*"))
                     if p.suffix in (".json", ".md", ".html")}
            stored = target_for(spec).store_report(
                name, run_report.candidate_endpoint or name, files)
            if stored:
                location, url = stored.location, stored.url
        except Exception as exc:
            log.warning("could not store the report with the target: %s",
                        redact_text(str(exc)))
    log.info("%s: report at %s", (run_report.outcome.headline if run_report.outcome
                                   else run_report.status), location)
    try:
        text = digest(run_report, location, plots)
        create_markdown_artifact(key=artifact_key(name, "report"), markdown=redact_text(text),
                                 description=f"{name}: {run_report.status}")
        if url:
            create_link_artifact(key=artifact_key(name, "report-link"), link=url,
                                 link_text=f"report of {name} ({location})",
                                 description=f"{name}: report.html in S3")
    except Exception as exc:
        log.warning("could not create the report artifact: %s", redact_text(str(exc)))
    return path
