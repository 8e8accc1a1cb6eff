"""The order of one deploy, in one place: the deploy flow runs it with its Prefect tasks, and
the dry run runs it against an in-memory account to record every request it sends
(recorded_run). Whatever happens, the candidate's resources are removed unless they became
production, production as the run leaves it is looked at, and the report is written.

`impl` holds the steps: lmiflow.tasks.steps (Prefect tasks: retries, artifacts, logs) or
LifecycleSteps (the lifecycle's functions on one target, without Prefect). Both take the same
arguments, so neither the flow nor the recording can take a path the other does not."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

from lmiflow import lifecycle, pipeline
from lmiflow.bench.gates import Verdict
from lmiflow.bench.metrics import BenchResult
from lmiflow.model_source import ResolvedModel
from lmiflow.pipeline import Candidate, Names
from lmiflow.redact import redact_text
from lmiflow.report.model import PredictedVsMeasured, Promotion, PromotionPlan, SmokeTest
from lmiflow.report.outcome import ProductionState
from lmiflow.run_record import RunRecord
from lmiflow.sizing.planner import Plan
from lmiflow.spec import DeploymentSpec
from lmiflow.targets.aws_requests import AwsRequest
from lmiflow.targets.base import EndpointLock, EndpointStatus, Target
from lmiflow.targets.staging import StagingReport
from lmiflow.targets.weights import WeightsPlan, hub_token

PlanFn = Callable[[], tuple[ResolvedModel, Plan, Candidate]]


def deploy(spec: DeploymentSpec, rec: RunRecord, impl: Any, plan: PlanFn,
           log: logging.Logger | logging.LoggerAdapter, report_dir: str | None = None
           ) -> tuple[str, Names | None]:
    """Run the deploy; returns (status, the candidate's names once planned). Interrupts
    (SIGTERM, Ctrl-C) clean up, write the report and propagate."""
    report = rec.report
    status, names = "failed", None
    try:
        with impl.endpoint_lock(spec, report.run_id) as lock:
            try:
                model, p, candidate = plan()
                names = candidate.names
                tags = pipeline.tags_for(names, report.run_id, pipeline.target_for(spec))
                preflight(spec, rec, impl, candidate)
                with rec.step("stage_weights") as s:
                    report.staging = impl.stage_weights(spec, candidate.weights)
                    s.summary = (report.staging.summary() if report.staging
                                 else f"nothing to stage ({candidate.weights.delivery})")
                with rec.step("create_model") as s:
                    created = impl.create_model(spec, candidate, tags)
                    s.summary = names.model + (
                        f" (removed leftovers: {', '.join(created.removed_leftovers)})"
                        if created.removed_leftovers else "")
                with rec.step("configure_endpoint") as s:
                    impl.configure_endpoint(spec, candidate, p, tags)
                    s.summary = names.endpoint_config
                with rec.step("create_endpoint") as s:
                    ep = impl.create_endpoint(spec, names, tags)
                    s.summary = f"InService after {ep.seconds:.0f} s: {names.endpoint}"
                with rec.step("smoke_test") as s:
                    try:
                        report.smoke_test = impl.smoke_test(spec, names.endpoint)
                    except Exception as exc:
                        report.smoke_test = SmokeTest(passed=False, output="",
                                                      error=redact_text(str(exc))[:500])
                        raise
                    s.summary = repr(report.smoke_test.output[:60])
                with rec.step("benchmark") as s:
                    bench = impl.benchmark(spec, names.endpoint, p, model.local_dir or None)
                    report.benchmark = bench
                    s.summary = ", ".join(f"c={lv.concurrency}: {lv.output_tokens_per_s:.0f} tok/s"
                                          for lv in bench.levels)
                report.calibration = _record_calibration(impl, spec, model, p, bench, candidate,
                                                         rec, log)
                with rec.step("gate") as s:
                    # production measured beside the candidate in this run, else its saved one
                    report.baseline = bench.production or impl.load_baseline(spec)
                    verdict = report.gate = impl.gate(spec, bench, report.baseline)
                    failed = [c for c in verdict.checks if not c.passed]
                    s.summary = "passed" if verdict.passed else (
                        f"rejected: {len(failed)} check(s) failed")
                if verdict.passed:
                    with rec.step("promote") as s:
                        lock.assert_held()  # a lease that expired and was taken over: stop here
                        report.promotion = impl.promote(spec, names, tags)
                        s.summary = report.promotion.action
                        impl.save_baseline(spec, bench)
                    status = "promoted"
                    if candidate.autoscaling is not None:
                        with rec.step("autoscale") as s:
                            report.autoscaling_applied = impl.autoscale(spec, candidate)
                            s.summary = (report.autoscaling_applied or ["nothing set up"])[0]
                else:
                    status = "rejected"
            except BaseException:
                status = "failed"
                raise
            finally:
                # still under the lock: a run of the same spec (same candidate names) that
                # takes it next must not find its candidate deleted by this one
                if status != "promoted" and names is not None:
                    rec.entering("cleanup")
                    report.cleanup = _cleanup(impl, spec, names, log)
            rec.entering("release")  # the lock, as the with block ends
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
        rec.entering("report")
        try:
            production = impl.production_state(spec)
        except Exception as exc:  # the report is written whatever happens
            production = None
            log.warning("could not look at production %s: %s", spec.name, redact_text(str(exc)))
        impl.report(rec.finish(status, production), report_dir, spec)  # type: ignore[arg-type]
    return status, names


def _cleanup(impl: Any, spec: DeploymentSpec, names: Names, log) -> list[str]:
    try:
        return impl.cleanup_candidate(spec, names)
    except Exception as exc:
        log.error("cleanup of %s failed: %s", names.endpoint, redact_text(str(exc)))
        return [f"CLEANUP FAILED: {redact_text(str(exc))}"]


def preflight(spec: DeploymentSpec, rec: RunRecord, impl: Any, candidate: Candidate) -> None:
    """Before anything is created: production may be replaced, the credentials may send the
    listed requests, the alarms exist, the peak fleet fits the quotas. (A step of its own so
    that a recording can ask it again once the requests are listed: recorded_run.)"""
    with rec.step("preflight") as s:
        impl.check_production(spec)
        rec.report.promotion_plan = impl.preflight(spec, candidate, rec.planned_requests())
        s.summary = _peak_summary(rec.report.promotion_plan)


def _record_calibration(impl: Any, spec, model, p, bench, candidate, rec, log
                        ) -> PredictedVsMeasured:
    """Predicted vs measured, kept in the target's calibration store: a by-product of the
    benchmark that must never fail the deploy."""
    try:
        return impl.record_calibration(spec, model, p, bench, candidate.image_uri,
                                       rec.report.run_id or candidate.names.endpoint)
    except Exception as exc:
        why = redact_text(str(exc))[:300]
        log.warning("calibration records not kept: %s", why)
        return PredictedVsMeasured(notes=[f"not recorded: {why}"])


def _peak_summary(plan: PromotionPlan | None) -> str:
    if plan is None:
        return "nothing to check"
    peak = ", ".join(f"{n} x {t}" for t, n in plan.peak_instances.items())
    return (f"{len(plan.alarms)} rollback alarm(s) exist; " if plan.alarms else "") + (
        f"peak {peak} within quota")


def _signal_name(exc: BaseException) -> str:
    signum = getattr(exc, "signal", None) or getattr(exc, "signum", None)
    return signal.Signals(signum).name if signum else type(exc).__name__


class LifecycleSteps:
    """The deploy's steps on one target, without Prefect: what the tasks in
    lmiflow.tasks.steps call, minus their artifacts and logs."""

    hub_token = staticmethod(hub_token)

    def __init__(self, target: Target):
        self.target = target

    def endpoint_lock(self, spec: DeploymentSpec, run_id: str | None) -> EndpointLock:
        return self.target.endpoint_lock(spec.name, run_id)

    def check_production(self, spec: DeploymentSpec) -> EndpointStatus | None:
        return lifecycle.check_production(self.target, spec)

    def preflight(self, spec: DeploymentSpec, candidate: Candidate,
                  requests: list[AwsRequest] | None = None) -> PromotionPlan | None:
        return lifecycle.preflight(self.target, candidate, requests or ())

    def stage_weights(self, spec: DeploymentSpec, weights: WeightsPlan) -> StagingReport | None:
        return lifecycle.stage_weights(self.target, spec, weights, token_of=self.hub_token)

    def create_model(self, spec: DeploymentSpec, candidate: Candidate, tags: dict[str, str]):
        return lifecycle.create_model(self.target, spec, candidate, tags,
                                      token_of=self.hub_token)

    def configure_endpoint(self, spec: DeploymentSpec, candidate: Candidate, p: Plan,
                           tags: dict[str, str]):
        return lifecycle.configure_endpoint(self.target, candidate, p, tags)

    def create_endpoint(self, spec: DeploymentSpec, names: Names, tags: dict[str, str]):
        return lifecycle.create_endpoint(self.target, names, tags,
                                         spec.promotion.endpoint_timeout_s)

    def smoke_test(self, spec: DeploymentSpec, endpoint: str) -> SmokeTest:
        return lifecycle.require_passed(lifecycle.smoke_test(self.target, spec, endpoint))

    def benchmark(self, spec: DeploymentSpec, endpoint: str, p: Plan,
                  tokenizer_dir: str | None) -> BenchResult:
        return lifecycle.benchmark(self.target, spec, endpoint, p, tokenizer_dir)

    def record_calibration(self, spec: DeploymentSpec, model: ResolvedModel, p: Plan,
                           bench: BenchResult, image_uri: str | None, run: str
                           ) -> PredictedVsMeasured:
        return lifecycle.record_calibration(self.target, model.spec, p, bench, run=run,
                                            model_id=spec.model.id, image_uri=image_uri)

    def load_baseline(self, spec: DeploymentSpec) -> BenchResult | None:
        return lifecycle.load_baseline(self.target, spec.name)

    def gate(self, spec: DeploymentSpec, bench: BenchResult, baseline: BenchResult | None
             ) -> Verdict:
        return lifecycle.gate(self.target, spec, bench, baseline)

    def promote(self, spec: DeploymentSpec, names: Names, tags: dict[str, str]) -> Promotion:
        return lifecycle.promote(self.target, spec, names, tags)

    def save_baseline(self, spec: DeploymentSpec, bench: BenchResult) -> str | None:
        return lifecycle.save_baseline(self.target, spec.name, bench)

    def autoscale(self, spec: DeploymentSpec, candidate: Candidate) -> list[str]:
        return lifecycle.autoscale(self.target, spec.name, candidate.autoscaling)

    def cleanup_candidate(self, spec: DeploymentSpec, names: Names) -> list[str]:
        return lifecycle.cleanup_candidate(self.target, names)

    def production_state(self, spec: DeploymentSpec) -> ProductionState:
        return lifecycle.production_state(self.target, spec.name)

    def report(self, run_report: Any, report_dir: str | None, spec: DeploymentSpec) -> None:
        """Only the target's copy of the report files (their contents are the run's)."""
        files = {f"report.{ext}": f"<report.{ext}>".encode() for ext in ("json", "md", "html")}
        self.target.store_report(run_report.endpoint,
                                 run_report.candidate_endpoint or run_report.endpoint, files)

