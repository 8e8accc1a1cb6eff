"""The flows: deploy (the whole pipeline, benchmark-gated), plan-only, and teardown.

Control flow only: the deploy's order is lmiflow.deploy_run's (the dry run records its requests
from the same), every step, side effect and artifact is a task in tasks/steps.py."""

from __future__ import annotations

from typing import Any

from lmiflow.tasks import steps
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed

from lmiflow import deploy_run
from lmiflow.errors import UserInputError
from lmiflow.redact import install_log_redaction, register_environment
from lmiflow.report.model import RunReport
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
    rec = RunRecord(spec, _run_id())
    status, _ = deploy_run.deploy(spec, rec, steps, lambda: plan_steps(spec, rec, steps),
                                  get_run_logger(), report_dir)
    if status != "promoted":
        # A returned Failed state ends the run Failed without a traceback in the logs: the
        # report says which step or check failed and why.
        return Failed(message=f"{spec.name}: {rec.report.outcome.headline}")
    return rec.report.to_json_dict()


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
    """Delete production and every candidate resource of this endpoint, under its lock (as
    `lmiflow endpoints delete`): a deploy running meanwhile would create production again.

    Args:
        spec: The deployment config whose endpoint is torn down.
    """
    with steps.endpoint_lock(spec, _run_id()):
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
