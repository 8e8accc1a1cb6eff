"""The flows: deploy (the whole pipeline, benchmark-gated), plan-only, and teardown.

Control flow only: every step, side effect and artifact is a task in tasks/steps.py. Whatever
happens, the candidate's resources are removed unless they became production, and the report
is written."""

from __future__ import annotations

import signal
from typing import Any

from lmiflow.tasks import steps
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed

from lmiflow import pipeline
from lmiflow.errors import UserInputError
from lmiflow.redact import install_log_redaction, redact_text, register_environment
from lmiflow.report.model import PredictedVsMeasured, RunReport, SmokeTest
from lmiflow.run_record import RunRecord, plan_steps
from lmiflow.spec import DeploymentSpec


def _run_id() -> str | None:
    return str(flow_run.id) if flow_run.id else None


@flow(name="deploy-llm", flow_run_name="deploy-{spec.name}", log_prints=True)
def deploy_llm(spec: DeploymentSpec, report_dir: str | None = None) -> dict:
    """Size, deploy a candidate, smoke-test, benchmark, gate, and promote it to production;
    a rejected or failed candidate is removed and production is left as it was.

    Args:
        spec: The whole deployment config (what a YAML config file holds).
        report_dir: Where report.json/.md/.html go on the worker (default reports/<name>).
    """
    register_environment()  # a worker's HF_TOKEN and AWS keys are masked in its logs too
    install_log_redaction()
    log = get_run_logger()
    rec = RunRecord(spec, _run_id())
    report = rec.report
    status, names = "failed", None
    try:
        with pipeline.target_for(spec).endpoint_lock(spec.name, report.run_id) as lock:
            model, p, candidate = plan_steps(spec, rec, steps)
            names = candidate.names
            tags = pipeline.tags_for(names, report.run_id, pipeline.target_for(spec))
            with rec.step("preflight") as s:
                steps.check_production(spec)
                report.promotion_plan = steps.preflight(spec, candidate,
                                                        rec.planned_requests())
                s.summary = _peak_summary(report.promotion_plan)
            with rec.step("stage_weights") as s:
                report.staging = steps.stage_weights(spec, candidate.weights)
                s.summary = (report.staging.summary() if report.staging
                             else f"nothing to stage ({candidate.weights.delivery})")
            with rec.step("create_model") as s:
                created = steps.create_model(spec, candidate, tags)
                s.summary = names.model + (
                    f" (removed leftovers: {', '.join(created.removed_leftovers)})"
                    if created.removed_leftovers else "")
            with rec.step("configure_endpoint") as s:
                steps.configure_endpoint(spec, candidate, p, tags)
                s.summary = names.endpoint_config
            with rec.step("create_endpoint") as s:
                ep = steps.create_endpoint(spec, names, tags)
                s.summary = f"InService after {ep.seconds:.0f} s: {names.endpoint}"
            with rec.step("smoke_test") as s:
                try:
                    report.smoke_test = steps.smoke_test(spec, names.endpoint)
                except Exception as exc:
                    report.smoke_test = SmokeTest(passed=False, output="",
                                                  error=redact_text(str(exc))[:500])
                    raise
                s.summary = repr(report.smoke_test.output[:60])
            with rec.step("benchmark") as s:
                bench = steps.benchmark(spec, names.endpoint, p, model.local_dir or None)
                report.benchmark = bench
                s.summary = ", ".join(f"c={lv.concurrency}: {lv.output_tokens_per_s:.0f} tok/s"
                                      for lv in bench.levels)
            report.calibration = _record_calibration(spec, model, p, bench, candidate, rec)
            with rec.step("gate") as s:
                # production measured beside the candidate in this run, else its saved one
                report.baseline = bench.production or steps.load_baseline(spec)
                verdict = report.gate = steps.gate(spec, bench, report.baseline)
                failed = [c for c in verdict.checks if not c.passed]
                s.summary = "passed" if verdict.passed else (
                    f"rejected: {len(failed)} check(s) failed")
            if verdict.passed:
                with rec.step("promote") as s:
                    lock.assert_held()  # a lease that expired and was taken over: stop here
                    report.promotion = steps.promote(spec, names, tags)
                    s.summary = report.promotion.action
                    steps.save_baseline(spec, bench)
                status = "promoted"
                if candidate.autoscaling is not None:
                    with rec.step("autoscale") as s:
                        report.autoscaling_applied = steps.autoscale(spec, candidate)
                        s.summary = (report.autoscaling_applied or ["nothing set up"])[0]
            else:
                status = "rejected"
    except Exception as exc:
        status = "failed"
        log.error("deploy of %s failed in %s: %s", spec.name, report.failed_step,
                  redact_text(str(exc)))
    except BaseException as exc:  # SIGTERM (Prefect's TerminationSignal) or Ctrl-C
        report.error = f"interrupted ({_signal_name(exc)}) during " + (
            report.failed_step or "the run")
        log.error("deploy of %s: %s", spec.name, report.error)
        raise
    finally:
        if status != "promoted" and names is not None:
            try:
                report.cleanup = steps.cleanup_candidate(spec, names)
            except Exception as exc:
                report.cleanup = [f"CLEANUP FAILED: {redact_text(str(exc))}"]
                log.error("cleanup of %s failed: %s", names.endpoint, redact_text(str(exc)))
        try:
            production = steps.production_state(spec)
        except Exception as exc:  # the report is written whatever happens
            production = None
            log.warning("could not look at production %s: %s", spec.name, redact_text(str(exc)))
        steps.report(rec.finish(status, production), report_dir, spec)
    if status != "promoted":
        # A returned Failed state ends the run Failed without a traceback in the logs: the
        # report says which step or check failed and why.
        return Failed(message=f"{spec.name}: {report.outcome.headline}")
    return report.to_json_dict()


def _record_calibration(spec, model, p, bench, candidate, rec) -> PredictedVsMeasured:
    """Predicted vs measured, kept in the target's calibration store: a by-product of the
    benchmark that must never fail the deploy."""
    try:
        return steps.record_calibration(spec, model, p, bench, candidate.image_uri,
                                        rec.report.run_id or candidate.names.endpoint)
    except Exception as exc:
        why = redact_text(str(exc))[:300]
        get_run_logger().warning("calibration records not kept: %s", why)
        return PredictedVsMeasured(notes=[f"not recorded: {why}"])


def _peak_summary(plan) -> str:
    if plan is None:
        return "nothing to check"
    peak = ", ".join(f"{n} x {t}" for t, n in plan.peak_instances.items())
    return (f"{len(plan.alarms)} rollback alarm(s) exist; " if plan.alarms else "") + (
        f"peak {peak} within quota")


def _signal_name(exc: BaseException) -> str:
    signum = getattr(exc, "signal", None) or getattr(exc, "signum", None)
    return signal.Signals(signum).name if signum else type(exc).__name__


@flow(name="plan-llm", flow_run_name="plan-{spec.name}")
def plan_llm(spec: DeploymentSpec, report_dir: str | None = None) -> dict:
    """Plan only: size the model, choose the instance, render serving.properties. Creates
    nothing and calls no cloud API.

    Args:
        spec: The whole deployment config (what a YAML config file holds).
        report_dir: Where report.json/.md/.html go on the worker (default reports/<name>).
    """
    rec = RunRecord(spec, _run_id())
    try:
        plan_steps(spec, rec, steps)
        status = "planned"
    except Exception:
        status = "failed"
        raise
    finally:
        report: RunReport = rec.finish(status)
        steps.report(report, report_dir, spec)
    return report.to_json_dict()


@flow(name="teardown-llm", flow_run_name="teardown-{spec.name}")
def teardown_llm(spec: DeploymentSpec) -> list[str]:
    """Delete production and every candidate resource of this endpoint.

    Args:
        spec: The deployment config whose endpoint is torn down.
    """
    return steps.teardown(spec)


@flow(name="redeploy-from-config", flow_run_name="redeploy-{config}")
def redeploy_from_config(config: str = "configs/local-demo.yaml",
                         overrides: dict[str, Any] | None = None,
                         report_dir: str | None = None) -> dict:
    """Deploy from a config file read at run time (so a new model revision or LMI version in
    the file takes effect on the next scheduled run), with a few fields changed for this run:
    what a UI run needs instead of the whole config.

    Args:
        config: Path of a deployment config (YAML) on the worker, relative to the lmiflow
            checkout, e.g. configs/local-demo.yaml.
        overrides: Fields to change for this run, by dotted name, e.g.
            {"model.revision": "main", "workload.concurrency": 8,
            "instance.instance_type": "ml.g6e.xlarge"}; validated like the file.
        report_dir: Where report.json/.md/.html go on the worker (default reports/<name>).
    """
    spec = _load(config, overrides)
    if not isinstance(spec, DeploymentSpec):
        return spec
    state = deploy_llm(spec, report_dir=report_dir, return_state=True)
    if not state.is_completed():
        return Failed(message=state.message or f"{spec.name}: not promoted")
    return state.result()


def _load(config: str, overrides: dict[str, Any] | None) -> DeploymentSpec | Any:
    """The spec, or a Failed state naming the bad field (no traceback: it is the user's to
    fix, like the CLI's exit 2)."""
    from lmiflow.spec import load_spec

    try:
        return load_spec(config, overrides)
    except UserInputError as exc:
        get_run_logger().error("config %s: %s", config, exc)
        return Failed(message=f"config {config}: {exc}")


@flow(name="plan-from-config", flow_run_name="plan-{config}")
def plan_from_config(config: str = "configs/local-demo.yaml",
                     overrides: dict[str, Any] | None = None,
                     report_dir: str | None = None) -> dict:
    """Plan only, from a config file: what would be deployed, at what cost. Creates nothing.

    Args:
        config: Path of a deployment config (YAML) on the worker, e.g.
            configs/llama-3.1-8b-g5-g6.yaml.
        overrides: Fields to change for this plan, by dotted name, e.g.
            {"workload.concurrency": 16}.
        report_dir: Where report.json/.md/.html go on the worker (default reports/<name>).
    """
    spec = _load(config, overrides)
    if not isinstance(spec, DeploymentSpec):
        return spec
    return plan_llm(spec, report_dir=report_dir)
