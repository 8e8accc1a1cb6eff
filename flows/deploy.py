"""The flows: deploy (the whole pipeline, benchmark-gated), plan-only, and teardown.

Control flow only: each step is a task in tasks/steps.py. Whatever happens, the candidate's
resources are removed unless they became production, and the report is written."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

from lmiflow.flows.record import RunRecord, plan_steps, write_report
from lmiflow.tasks import steps
from lmiflow.tasks.common import artifact_key
from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Failed

from lmiflow import pipeline
from lmiflow.report.redact import install_log_redaction, redact_text, register_environment
from lmiflow.spec import DeploymentSpec


@flow(name="deploy-llm", flow_run_name="deploy-{spec.name}", log_prints=True)
def deploy_llm(spec: DeploymentSpec, report_dir: str | None = None) -> dict:
    """Size, deploy a candidate, smoke-test, benchmark, gate, and promote it to production;
    a rejected or failed candidate is removed and production is left as it was."""
    register_environment()  # a worker's HF_TOKEN and AWS keys are masked in its logs too
    install_log_redaction()
    log = get_run_logger()
    rec = RunRecord(spec, str(flow_run.id) if flow_run.id else None)
    status, names = "failed", None
    target = steps.target_for(spec)
    lock = target.endpoint_lock(spec.name) if hasattr(target, "endpoint_lock") else (
        contextlib.nullcontext())
    try:
        with lock:
            model, p, props, image, names = plan_steps(spec, rec, steps)
            tags = pipeline.tags_for(names, rec.report["run_id"])
            with rec.step("create_model") as s:
                created = steps.create_model(spec, names, props, image, tags)
                s["summary"] = names.model + (
                    f" (removed leftovers: {', '.join(created['removed_leftovers'])})"
                    if created["removed_leftovers"] else "")
            with rec.step("configure_endpoint") as s:
                steps.configure_endpoint(spec, names, p, tags)
                s["summary"] = names.endpoint_config
            with rec.step("create_endpoint") as s:
                ep = steps.create_endpoint(spec, names, tags)
                s["summary"] = f"{names.endpoint} InService after {ep['seconds']:.0f} s"
            with rec.step("smoke_test") as s:
                try:
                    rec.report["smoke_test"] = steps.smoke_test(spec, names.endpoint)
                except Exception as exc:
                    rec.report["smoke_test"] = {"passed": False, "output": "",
                                                "error": redact_text(str(exc))[:500]}
                    raise
                s["summary"] = repr(rec.report["smoke_test"]["output"][:60])
            with rec.step("benchmark") as s:
                bench = steps.benchmark(spec, names.endpoint, p,
                                        model.local_dir if model.local_dir else None)
                rec.report["benchmark"] = bench
                s["summary"] = ", ".join(
                    f"c={lv['concurrency']}: {lv['output_tokens_per_s']:.0f} tok/s"
                    for lv in bench["levels"])
            from lmiflow.targets.baseline import load_baseline, save_baseline

            with rec.step("gate") as s:
                baseline = load_baseline(target, spec.name)
                rec.report["baseline"] = baseline
                verdict = steps.gate(spec, bench, baseline)
                rec.report["gate"] = verdict
                failed = [c for c in verdict["checks"] if not c["passed"]]
                s["summary"] = "passed" if verdict["passed"] else (
                    f"rejected: {len(failed)} check(s) failed")
            if verdict["passed"]:
                with rec.step("promote") as s:
                    rec.report["promotion"] = steps.promote(spec, names, tags)
                    s["summary"] = rec.report["promotion"]["action"]
                    save_baseline(target, spec.name, bench)
                status = "promoted"
            else:
                status = "rejected"
                rec.report["error"] = "gate rejected the candidate: " + "; ".join(
                    f"{c['metric']} {c['stat']} {c['observed']} {c['op']} {c['threshold']}"
                    f" (c={c.get('concurrency')})" for c in failed)
    except Exception as exc:
        status = "failed"
        log.error("deploy of %s failed in %s: %s", spec.name, rec.report["failed_step"],
                  redact_text(str(exc)))
    except BaseException as exc:  # SIGTERM (Prefect's TerminationSignal) or Ctrl-C
        rec.report["error"] = f"interrupted ({_signal_name(exc)}) during " + (
            rec.report["failed_step"] or "the run")
        log.error("deploy of %s: %s", spec.name, rec.report["error"])
        raise
    finally:
        if status != "promoted" and names is not None:
            try:
                rec.report["cleanup"] = steps.cleanup_candidate(spec, names)
                log.warning("removed candidate resources: %s",
                            ", ".join(rec.report["cleanup"]) or "none existed")
            except Exception as exc:
                rec.report["cleanup"] = [f"CLEANUP FAILED: {redact_text(str(exc))}"]
                log.error("cleanup of %s failed: %s", names.endpoint, redact_text(str(exc)))
        report = rec.finish(status)
        path = write_report(report, report_dir, spec.name)
        _link(spec, path)
    if status != "promoted":
        # A returned Failed state ends the run Failed without a traceback in the logs: the
        # report already says which step failed and why.
        return Failed(message=f"{spec.name}: {status}" + (
            f" at {rec.report['failed_step']}" if rec.report["failed_step"] else "")
            + (f": {rec.report['error']}" if rec.report["error"] else ""))
    return report


def _signal_name(exc: BaseException) -> str:
    signum = getattr(exc, "signal", None) or getattr(exc, "signum", None)
    return signal.Signals(signum).name if signum else type(exc).__name__


def _link(spec: DeploymentSpec, path: Path) -> None:
    # An artifact must not fail a finished run.
    with contextlib.suppress(Exception):
        create_link_artifact(key=artifact_key(spec.name, "report"),
                             link=path.resolve().as_uri(), link_text=f"report of {spec.name}",
                             description=f"{spec.name}: report.json / report.md / report.html")


@flow(name="plan-llm", flow_run_name="plan-{spec.name}")
def plan_llm(spec: DeploymentSpec, report_dir: str | None = None) -> dict:
    """Plan only: size the model, choose the instance, render serving.properties. Creates
    nothing and calls no cloud API."""
    rec = RunRecord(spec, str(flow_run.id) if flow_run.id else None)
    try:
        plan_steps(spec, rec, steps)
        status = "planned"
    except Exception:
        status = "failed"
        raise
    finally:
        report = rec.finish(status)
        write_report(report, report_dir, spec.name)
    return report


@flow(name="teardown-llm", flow_run_name="teardown-{spec.name}")
def teardown_llm(spec: DeploymentSpec) -> list[str]:
    """Delete production and every candidate resource of this endpoint."""
    log = get_run_logger()
    target = steps.target_for(spec)
    removed: list[str] = []
    prod = target.describe(spec.name)
    config = prod.config_name if prod else None
    if target.delete_endpoint(spec.name):
        removed.append(f"endpoint {spec.name}")
    removed += steps.remove_leftovers(target, spec.name)
    if config:
        model = steps._config_model(target, config)
        if target.delete_endpoint_config(config):
            removed.append(f"endpoint config {config}")
        if model and target.delete_model(model):
            removed.append(f"model {model}")
    log.info("teardown of %s removed: %s", spec.name, ", ".join(removed) or "nothing")
    create_markdown_artifact(key=artifact_key(spec.name, "teardown"),
                             markdown="# Teardown\n\n" + "\n".join(f"- {r}" for r in removed))
    return removed


@flow(name="redeploy-from-config", flow_run_name="redeploy-{config}")
def redeploy_from_config(config: str = "configs/local-demo.yaml",
                         report_dir: str | None = None) -> dict:
    """Scheduled redeploys: read the YAML config at run time (so a new model revision or LMI
    version in the file takes effect on the next run) and run deploy-llm as a subflow."""
    from lmiflow.spec import load_spec

    spec = load_spec(config)
    state = deploy_llm(spec, report_dir=report_dir, return_state=True)
    if not state.is_completed():
        return Failed(message=state.message or f"{spec.name}: not promoted")
    return state.result()


@flow(name="plan-from-config", flow_run_name="plan-{config}")
def plan_from_config(config: str = "configs/local-demo.yaml",
                     report_dir: str | None = None) -> dict:
    """Plan only, from a config file: what would be deployed, at what cost. Creates nothing."""
    from lmiflow.spec import load_spec

    return plan_llm(load_spec(config), report_dir=report_dir)
