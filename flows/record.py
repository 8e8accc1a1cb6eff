"""The run record and the planning steps shared by every flow and by `--dry-run`. No Prefect
import here: a dry run must not start an API server."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import lmiflow
from lmiflow import pipeline
from lmiflow.report.redact import redact_text
from lmiflow.spec import DeploymentSpec

STEP_NAMES = ("fetch_config", "compute_memory", "choose_instance", "render_serving_properties",
              "create_model", "configure_endpoint", "create_endpoint", "smoke_test",
              "benchmark", "gate", "promote")


class RunRecord:
    """The report being assembled: steps with status and seconds, and each step's result."""

    def __init__(self, spec: DeploymentSpec, run_id: str | None):
        self.steps: list[dict[str, Any]] = []
        self.report: dict[str, Any] = {
            "lmiflow_version": lmiflow.__version__, "run_id": run_id,
            "started_at": _now(), "finished_at": None, "status": "failed",
            "endpoint": spec.name, "candidate_endpoint": None, "target": spec.target.kind,
            "failed_step": None, "error": None,
            "model": {"id": spec.model.id, "revision": spec.model.revision},
            "steps": self.steps, "plan": None, "serving_properties": None,
            "image_uri": None, "smoke_test": None, "benchmark": None, "gate": None,
            "baseline": None, "promotion": None, "cleanup": None,
            "config": spec.model_dump(mode="json"),
            "versions": _versions(spec),
        }

    @contextlib.contextmanager
    def step(self, name: str):
        rec = {"name": name, "status": "running", "started_at": time.time(), "seconds": 0.0,
               "summary": ""}
        self.steps.append(rec)
        t0 = time.perf_counter()
        try:
            yield rec
            rec["status"] = "completed"
        except BaseException as exc:
            rec["status"] = "failed"
            self.report["failed_step"] = name
            if isinstance(exc, Exception):
                rec["summary"] = redact_text(f"{type(exc).__name__}: {exc}")[:500]
                self.report["error"] = redact_text(str(exc))[:2000]
            else:  # SIGTERM or Ctrl-C: the flow names the signal in the report's error
                rec["summary"] = "interrupted"
            raise
        finally:
            rec["seconds"] = round(time.perf_counter() - t0, 3)

    def finish(self, status: str) -> dict:
        ran = {s["name"] for s in self.steps}
        for name in STEP_NAMES:
            if name not in ran:
                self.steps.append({"name": name, "status": "skipped", "seconds": 0.0,
                                   "started_at": None, "summary": ""})
        self.report["status"] = status
        self.report["finished_at"] = _now()
        return self.report


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _versions(spec: DeploymentSpec) -> dict[str, str | None]:
    try:
        prefect_version = version("prefect")
    except PackageNotFoundError:
        prefect_version = None
    return {"lmiflow": lmiflow.__version__, "prefect": prefect_version,
            "lmi_image": None, "model_revision": spec.model.revision or "main"}


def write_report(report: dict, report_dir: str | Path | None, name: str) -> Path:
    from lmiflow.report.writer import write_report as write

    out = Path(report_dir) if report_dir else Path("reports") / name
    return write(report, out)["json"]


class DirectSteps:
    """The planning steps without Prefect (no API server, no artifacts): `--dry-run` and the
    CLI's up-front validation use these, so bad input exits before anything starts."""

    fetch_config = staticmethod(pipeline.fetch_config)
    compute_memory = staticmethod(pipeline.compute_memory)
    choose_instance = staticmethod(pipeline.choose_instance)

    render_serving_properties = staticmethod(pipeline.prepare_serving)


def plan_steps(spec: DeploymentSpec, rec: RunRecord, impl: Any) -> tuple:
    """fetch_config .. render_serving_properties, shared by deploy, plan-only and dry runs."""
    with rec.step("fetch_config") as s:
        model = impl.fetch_config(spec)
        rec.report["model"].update(model.spec.model_dump(mode="json"))
        rec.report["model"]["source"] = model.source
        s["summary"] = f"{model.spec.model_type}, {model.spec.parameters:,} parameters"
    with rec.step("compute_memory") as s:
        mem = impl.compute_memory(spec, model)
        s["summary"] = f"{mem['total_bytes'] / 1e9:.1f} GB unsharded"
    with rec.step("choose_instance") as s:
        p = impl.choose_instance(spec, model)
        rec.report["plan"] = p.model_dump(mode="json")  # the `lmiflow plan --json` shape
        rec.report["model"]["kv_cache_bytes_per_token"] = p.model.kv_cache_bytes_per_token
        s["summary"] = (f"{p.chosen.instance_type} x{p.chosen.instance_count}, tp "
                        f"{p.chosen.tensor_parallel_degree}")
    with rec.step("render_serving_properties") as s:
        props, image, names = impl.render_serving_properties(spec, model, p)
        rec.report["serving_properties"] = props
        rec.report["image_uri"] = image
        rec.report["versions"]["lmi_image"] = image
        rec.report["candidate_endpoint"] = names.endpoint
        s["summary"] = f"candidate {names.endpoint}"
    return model, p, props, image, names


