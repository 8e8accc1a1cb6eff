"""The run record and the planning steps shared by every flow and by `--dry-run`. No Prefect
import here: a dry run must not start an API server."""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
import time
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import lmiflow
from lmiflow import pipeline
from lmiflow.errors import NotAnswering, StateError
from lmiflow.model_source import ResolvedModel
from lmiflow.pipeline import Candidate, MemoryEstimate
from lmiflow.redact import redact_text
from lmiflow.report.model import (
    ReportedModel,
    RunReport,
    RunStatus,
    ShownRequest,
    StepRecord,
    Versions,
)
from lmiflow.report.outcome import ProductionState, outcome
from lmiflow.sizing.planner import Plan
from lmiflow.sizing.units import gb
from lmiflow.spec import DeploymentSpec
from lmiflow.targets.aws_requests import AwsRequest

STEP_NAMES = ("fetch_config", "compute_memory", "choose_instance", "render_serving_properties",
              "preflight", "stage_weights", "create_model", "configure_endpoint", "create_endpoint",
              "smoke_test", "benchmark", "gate", "promote", "autoscale")


class RunRecord:
    """The report being assembled: each step's status and seconds, and each step's result."""

    def __init__(self, spec: DeploymentSpec, run_id: str | None):
        # autoscale is a step of the runs that ask for it: the others' reports do not list it
        self.not_answering: set[str] = set()  # endpoints that gave no answer in time
        self.step_names = tuple(n for n in STEP_NAMES
                                if n != "autoscale" or spec.autoscaling is not None)
        self.report = RunReport(
            lmiflow_version=lmiflow.__version__, run_id=run_id, started_at=_now(),
            endpoint=spec.name, target=spec.target.kind,
            model=ReportedModel(id=spec.model.id, revision=spec.model.revision),
            config=spec.model_dump(mode="json"), versions=_versions(spec),
        )

    def planned_requests(self) -> list[AwsRequest]:
        """The run's planned requests as planning listed them (secrets masked: what the
        preflight derives the permissions to check from needs names, never a secret)."""
        return [AwsRequest(**r.model_dump()) for r in self.report.requests or []]

    def entering(self, phase: str) -> None:
        """Work outside the report's steps begins (cleanup, release, report): what a
        recording labels its requests with (recorded_run)."""

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        rec = StepRecord(name=name, status="running", started_at=time.time())
        self.report.steps.append(rec)
        t0 = time.perf_counter()
        try:
            yield rec
            rec.status = "completed"
        except BaseException as exc:
            rec.status = "failed"
            rec.summary = redact_text(f"{type(exc).__name__}: {exc}")[:500]
            self.report.failed_step = name
            self.report.error = redact_text(str(exc))[:2000]
            if isinstance(exc, NotAnswering):  # the outcome says so of production
                self.not_answering.add(exc.endpoint)
            raise
        finally:
            rec.seconds = round(time.perf_counter() - t0, 3)

    def finish(self, status: RunStatus, production: ProductionState | None = None
               ) -> RunReport:
        """Close the record: steps that never ran are skipped; the outcome is put in words
        (with production as the run left it, when the caller looked)."""
        ran = {s.name for s in self.report.steps}
        self.report.steps += [StepRecord(name=n, status="skipped") for n in self.step_names
                              if n not in ran]
        self.report.status = status
        self.report.finished_at = _now()
        if self.report.component is not None:
            self.report.component = self.report.component.model_copy(
                update={"cold_start_s": cold_start_s(self.report.steps)})
        if production is not None and production.endpoint in self.not_answering:
            production = production.model_copy(update={"answering": False})
        self.report.production = production
        self.report.outcome = outcome(self.report, production)
        return self.report


def cold_start_s(steps: list[StepRecord]) -> float | None:
    """What a request after scale-to-zero waits, from this run's own timings: create_endpoint
    started instances and loaded the model onto them (the candidate's endpoint and its first
    copy). None when that step did not complete."""
    done = [s.seconds for s in steps if s.name == "create_endpoint" and s.status == "completed"]
    return done[-1] if done and done[-1] is not None else None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _versions(spec: DeploymentSpec) -> Versions:
    try:
        prefect_version = version("prefect")
    except PackageNotFoundError:
        prefect_version = None
    return Versions(lmiflow=lmiflow.__version__, prefect=prefect_version,
                    model_revision=spec.model.revision or "main")


def report_path(report_dir: str | Path | None, name: str) -> Path:
    """Where a run's report files go: --report-dir, else reports/<endpoint name>."""
    return Path(report_dir) if report_dir else Path("reports") / name


def write_report(report: RunReport, report_dir: str | Path | None,
                 plots: Mapping[str, bytes | None] | None = None) -> Path:
    """report.json, .md and .html; returns report.json's path. plots: see
    lmiflow.report.writer.report_plots."""
    from lmiflow.report.writer import write_report as write

    return write(report, report_path(report_dir, report.endpoint), plots)["json"]


def fallback_report_dirs(name: str, run_id: str | None) -> list[Path]:
    """Where a report goes when its own directory cannot take it (disk full, removed,
    read-only): the user's state directory, then the system's temporary directory. One
    directory per run, so the CLI finds this run's report and no other. (The state directory
    is LMIFLOW_STATE_DIR or the user's, whatever the target.)"""
    from lmiflow.targets.local import default_state_dir

    leaf = Path(name) / (run_id or "no-run-id")
    return [default_state_dir() / "reports" / leaf,
            Path(tempfile.gettempdir()) / "lmiflow-reports" / leaf]


class ReportNotWritten(RuntimeError):
    """Neither the report directory nor any fallback could take the report."""


def write_report_somewhere(report: RunReport, report_dir: str | Path | None,
                           plots: Mapping[str, bytes | None] | None = None
                           ) -> tuple[Path, str | None]:
    """write_report, and when that fails, the fallback directories in turn: writing a report
    must never turn a finished run (a promotion above all) into a failure. Returns the path
    and, when a fallback took it, why the report directory did not."""
    try:
        return write_report(report, report_dir, plots), None
    except (OSError, StateError) as exc:
        why = f"{report_path(report_dir, report.endpoint)}: {_reason(exc)}"
    for directory in fallback_report_dirs(report.endpoint, report.run_id):
        try:
            return write_report(report, directory, plots), why
        except (OSError, StateError) as exc:
            why += f"; {directory}: {_reason(exc)}"
    raise ReportNotWritten(why)


def _reason(exc: Exception) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc))[:200]


class DirectSteps:
    """The planning steps without Prefect (no API server, no artifacts): `--dry-run` and the
    CLI's up-front validation use these, so bad input exits before anything starts. The
    Prefect tasks in lmiflow.tasks.steps have the same signatures."""

    fetch_config = staticmethod(pipeline.fetch_config)
    compute_memory = staticmethod(pipeline.compute_memory)

    @staticmethod
    def choose_instance(spec: DeploymentSpec, model: ResolvedModel) -> Plan:
        # No service is called here: a calibration store kept in S3 is read by the deploy.
        return pipeline.choose_instance(spec, model, pipeline.target_for(spec), offline=True)

    @staticmethod
    def render_serving_properties(spec: DeploymentSpec, model: ResolvedModel, p: Plan
                                  ) -> Candidate:
        return pipeline.prepare_serving(spec, model, p, pipeline.target_for(spec))


class AlongsideSteps(DirectSteps):
    """DirectSteps for a config whose endpoint other configs share (`deploy --dry-run
    --alongside`): their components count in the packing of this one."""

    def __init__(self, configs: list[str]):
        self.configs = configs

    def render_serving_properties(self, spec: DeploymentSpec, model: ResolvedModel, p: Plan
                                  ) -> Candidate:
        from lmiflow.errors import UserInputError

        target = pipeline.target_for(spec)
        cand = pipeline.prepare_serving(spec, model, p, target,
                                        pipeline.alongside_needs(spec, p, self.configs))
        if cand.component is None:
            raise UserInputError("--alongside", "this config's model is not an inference "
                                 "component (target.mode): it cannot share its endpoint")
        return cand


def plan_steps(spec: DeploymentSpec, rec: RunRecord, impl: Any
               ) -> tuple[ResolvedModel, Plan, Candidate]:
    """fetch_config .. render_serving_properties, shared by deploy, plan-only and dry runs.
    impl: DirectSteps, or the Prefect tasks."""
    report = rec.report
    with rec.step("fetch_config") as s:
        model: ResolvedModel = impl.fetch_config(spec)
        report.model = ReportedModel(id=spec.model.id, revision=spec.model.revision,
                                     **model.spec.model_dump(), source=model.source)
        s.summary = f"{model.spec.model_type}, {model.spec.parameters:,} parameters"
    with rec.step("compute_memory") as s:
        mem: MemoryEstimate = impl.compute_memory(spec, model)
        s.summary = f"{gb(mem.total_bytes)} unsharded"
    with rec.step("choose_instance") as s:
        p: Plan = impl.choose_instance(spec, model)
        report.plan = p  # the `lmiflow plan --json` shape
        report.model = report.model.model_copy(
            update={"kv_cache_bytes_per_token": p.model.kv_cache_bytes_per_token})
        c = p.chosen
        s.summary = (f"{c.instance_type}" + (f" x{c.instance_count}" if c.instance_count > 1
                                             else "")
                     + f": {c.gpu_count}x {c.accelerator.removeprefix('NVIDIA ')}, tp "
                     f"{c.tensor_parallel_degree}")
    with rec.step("render_serving_properties") as s:
        cand: Candidate = impl.render_serving_properties(spec, model, p)
        report.serving_properties = cand.properties
        report.image_uri = cand.image_uri
        report.versions.lmi_image = cand.image_uri
        report.candidate_endpoint = cand.names.endpoint
        report.host = cand.host
        report.promotion_plan = cand.promotion
        report.component = cand.component
        report.autoscaling = cand.autoscaling
        report.weights = cand.weights
        # Every request the run will send, validated before anything is created, and the
        # permissions they need.
        target = pipeline.target_for(spec)
        reqs = pipeline.run_requests(spec, model, cand, p, target,
                                     pipeline.tags_for(cand.names, report.run_id, target))
        if reqs:
            report.requests = [ShownRequest(**r.shown()) for r in reqs]
            policies = target.iam_policies(reqs)
            if policies:
                report.iam_policy, report.execution_role_policy = policies
        s.summary = f"candidate {cand.names.endpoint}" + (
            f"; {len(reqs)} AWS requests planned" if reqs else "")
    return model, p, cand
