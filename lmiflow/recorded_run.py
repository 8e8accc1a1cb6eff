"""Every request a deploy sends, in order, recorded from the deploy itself: deploy_run's order
and the lifecycle's functions, run on the target's recording twin (targets.recording) once per
branch, then laid over each other. What `--dry-run` prints, report.json's `requests`, the IAM
policies and the preflight's simulated actions all come from this one list, so nothing can be
listed that is not sent, or sent that is not listed and permitted.

The branches: a first deploy (nothing exists); a redeploy promoted over a production that
serves an earlier config, on another instance type where the run scales production (with an
interrupted run's candidate and expired lease to take over); a redeploy the gate rejects; a
redeploy whose caller may not simulate its permissions. A request sent in some branches only
says in which (`when`); one sent several times in a row is listed once with its count; the
benchmark is recorded with one request per level and listed with the real count. Names the
run learns only from the account (production's earlier config, a leftover's hash) are shown
with `xxxxxxxx` for their hash.

What is not recorded but listed from its own module: the bytes of staged weights
(staging.planned_requests, what s3transfer sends per file) and planning's reads of an s3://
model (weights.s3_read_requests), both checked against moto by their tests.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from lmiflow import deploy_run, lifecycle, pipeline
from lmiflow.bench.gates import Verdict
from lmiflow.bench.metrics import BenchResult
from lmiflow.model_source import ResolvedModel
from lmiflow.pipeline import Candidate
from lmiflow.redact import MASK
from lmiflow.run_record import RunRecord
from lmiflow.sizing.planner import Plan
from lmiflow.spec import DeploymentSpec
from lmiflow.targets import recording_of
from lmiflow.targets.aws_requests import AwsRequest
from lmiflow.targets.base import Target
from lmiflow.targets.fake_account import EARLIER_HASH, LEFTOVER_HASH, SHOWN_HASH, Scenario

log = logging.getLogger(__name__)

FIRST = Scenario(name="first", description="a first deploy", production=False, stores=False)
REDEPLOY = Scenario(name="redeploy", description="a promoted redeploy", leftovers=True)
REJECTED = Scenario(name="rejected", description="a rejected redeploy", promoted=False)
# recorded in this order (the redeploys find what the first deploy stored in S3); listed in
# the redeploy's order, the others' requests laid in where they fall
SCENARIOS = (FIRST, REDEPLOY, REJECTED)
# only the preflight differs when the caller may not simulate its permissions
NO_SIMULATION = Scenario(name="no-simulation", description="a redeploy whose caller may not "
                         "simulate its permissions", may_simulate=False)
SIMULATES = "when the caller may simulate its permissions"
PROBES = "only when the caller may not simulate its permissions: the preflight then probes"
LEFTOVERS = ("only when an interrupted run left its candidate behind",
             "only when an interrupted run left its lease behind (taken over once expired)")


class RecordingFailed(RuntimeError):
    """The recorded run did not end as its branch should: a lifecycle the in-memory account
    cannot follow (a bug to fix there), never the user's input."""


class _Steps(deploy_run.LifecycleSteps):
    """The lifecycle's steps on a recording twin: the gate's verdict is the branch's (the
    benchmark measured an account that answers at once), and secrets are stand-ins."""

    def __init__(self, target: Target, recording: Any, scenario: Scenario,
                 listed: list[AwsRequest]):
        super().__init__(target)
        self.recording, self.scenario, self.listed = recording, scenario, listed

    @staticmethod
    def hub_token(secret_name: str | None) -> SecretStr:
        return SecretStr(MASK)  # the runner's token is not read to be shown

    def preflight(self, spec, candidate, requests=None):
        return super().preflight(spec, candidate, self.listed)

    def benchmark(self, spec: DeploymentSpec, endpoint: str, p: Plan,
                  tokenizer_dir: str | None) -> BenchResult:
        """One request per level: the listing gives the real benchmark's count (_shown).
        Without the runner's tokenizer, so the lookup in the endpoint's files is listed; no
        tokenizer is loaded (the Hub is not asked, transformers not imported)."""
        short = spec.benchmark.model_copy(update={
            "concurrency": spec.benchmark.concurrency[:1] or [1], "rates": [],
            "requests": 1, "warmup_requests": 0, "repeats": 1})
        self.recording.when = "when the runner has no copy of the model's tokenizer"
        try:
            return lifecycle.benchmark(self.target, spec.model_copy(
                update={"benchmark": short}), endpoint, p, None, load_tokenizers=False)
        finally:
            self.recording.when = None

    def gate(self, spec: DeploymentSpec, bench: BenchResult, baseline: BenchResult | None
             ) -> Verdict:
        # production as the gate asks after it; the comparison itself is pure (not recorded)
        verdict = super().gate(spec, bench, None)
        return verdict.model_copy(update={"passed": self.scenario.promoted})


def recorded_requests(spec: DeploymentSpec, model: ResolvedModel, p: Plan,
                      candidate: Candidate, target: Target, tags: dict[str, str]
                      ) -> list[AwsRequest]:
    """The run's requests, in order (none where the target has no API to record)."""
    recording = recording_of(target)
    if recording is None:
        return []
    run = pipeline.planned_run(spec, candidate, p, target, tags)
    traces, after = [], None
    for scenario in SCENARIOS:
        twin = recording.twin(scenario, run, after)
        _record(spec, model, p, candidate, scenario, _Steps(twin, recording, scenario, []),
                recording)
        traces.append((scenario, recording.take()))
        after = recording.account if scenario is FIRST else after
    # The preflight simulates the permissions of the listed requests: asked again, branch by
    # branch, once they are listed (IAM's requests need no permission it simulates, so the
    # list is then settled), and once for a caller who may not simulate.
    listed = merge(traces, run.bench_requests)
    firsts = {scenario.name: trace for scenario, trace in traces}
    again, after = [], None
    for scenario in (*SCENARIOS, NO_SIMULATION):
        twin = recording.twin(scenario, run, after)
        _record_preflight(spec, candidate, _Steps(twin, recording, scenario, listed),
                          recording)
        asked = recording.take()
        if scenario is NO_SIMULATION:
            return merge(again, run.bench_requests, asked)
        trace = firsts[scenario.name]
        at = next(i for i, r in enumerate(trace) if r.step == "preflight")
        again.append((scenario, trace[:at] + asked
                      + [r for r in trace[at:] if r.step != "preflight"]))
        after = recording.account if scenario is FIRST else after
    raise AssertionError("unreachable")


def _record_preflight(spec: DeploymentSpec, candidate: Candidate, steps: _Steps,
                      recording: Any) -> None:
    rec = _StepNames(spec, recording)
    with _quiet():
        deploy_run.preflight(spec, rec, steps, candidate)


def _record(spec, model, p, candidate, scenario: Scenario, steps: _Steps, recording) -> None:
    rec = _StepNames(spec, recording)
    problems: list[str] = []
    with _quiet():
        status, _ = deploy_run.deploy(spec, rec, steps,
                                      lambda: _planned(spec, model, p, candidate, rec, steps),
                                      _Collect(problems))
    want = "promoted" if scenario.promoted else "rejected"
    if status != want or problems:
        raise RecordingFailed(f"recording {scenario.description}: {status} in "
                              f"{rec.report.failed_step or 'no step'}: "
                              f"{'; '.join(problems) or rec.report.error}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """What a recorded run "did" is not news: lmiflow's loggers say nothing meanwhile."""
    quiet = logging.getLogger("lmiflow")
    level, quiet.level = quiet.level, logging.CRITICAL + 1
    try:
        yield
    finally:
        quiet.setLevel(level)


def _planned(spec: DeploymentSpec, model: ResolvedModel, p: Plan, candidate: Candidate,
             rec: RunRecord, steps: _Steps) -> tuple[ResolvedModel, Plan, Candidate]:
    """The plan as made, with the one question planning asks the target (the calibration
    store its latency predictions use) asked again of the twin."""
    with rec.step("choose_instance"):
        pipeline.choose_instance(spec, model, steps.target)
    rec.report.candidate_endpoint = candidate.names.endpoint  # where its report is kept
    return model, p, candidate


class _StepNames(RunRecord):
    """A RunRecord that labels each recorded request with the step that sent it."""

    def __init__(self, spec: DeploymentSpec, recording: Any):
        super().__init__(spec, None)
        self.recording = recording
        recording.step = "lock"

    def step(self, name: str):
        self.recording.step = name
        return super().step(name)

    def entering(self, phase: str) -> None:
        self.recording.step = phase


class _Collect(logging.LoggerAdapter):
    """deploy_run logs what went wrong; a recorded run must not go wrong."""

    def __init__(self, problems: list[str]):
        super().__init__(log, {})
        self.problems = problems

    def error(self, msg, *args, **kw):  # type: ignore[override]
        self.problems.append(msg % args)

    def warning(self, msg, *args, **kw):  # type: ignore[override]
        self.problems.append(msg % args)


# ---- laying the branches over each other --------------------------------------------------


@dataclass
class _Entry:
    req: AwsRequest
    key: str
    count: int = 1
    scenarios: set[str] = field(default_factory=set)
    extra: str | None = None


def _key(req: AwsRequest) -> str:
    """What makes two requests the same request: step, operation and parameters, less what
    differs from call to call (bodies, ETags)."""
    params = {k: v for k, v in req.params.items() if k not in ("Body", "IfMatch")}
    return json.dumps([req.step, req.service, req.operation, params], sort_keys=True,
                      default=str)


def _collapse(scenario: str, trace: list[AwsRequest]) -> list[_Entry]:
    out: list[_Entry] = []
    for req in trace:
        key = _key(req)
        if out and out[-1].key == key:
            out[-1].count += 1
        else:
            out.append(_Entry(req, key, 1, {scenario}))
    return out


def merge(traces: list[tuple[Scenario, list[AwsRequest]]], bench_requests: int,
          no_simulation: list[AwsRequest] | None = None) -> list[AwsRequest]:
    """One list in the redeploy's order, each request saying the branches it is sent in;
    no_simulation: the preflight of a caller who may not simulate its permissions, laid
    over the redeploy's preflight."""
    by_name = {s.name: (s, t) for s, t in traces}
    spine, rest = by_name.pop(REDEPLOY.name), list(by_name.values())
    merged = _collapse(spine[0].name, spine[1])
    for scenario, trace in rest:
        merged = _lay_over(merged, _collapse(scenario.name, trace), scenario.name)
    names = [s.name for s, _ in traces]
    if no_simulation is not None:
        at = [i for i, e in enumerate(merged) if e.req.step == "preflight"]
        block = merged[at[0]:at[-1] + 1]
        laid = _lay_over(block, _collapse(NO_SIMULATION.name, no_simulation),
                         NO_SIMULATION.name)
        for e in laid:
            if e.scenarios == {NO_SIMULATION.name}:
                e.scenarios, e.extra = set(names), PROBES
            elif NO_SIMULATION.name not in e.scenarios:
                e.extra = SIMULATES
            e.scenarios.discard(NO_SIMULATION.name)
        merged[at[0]:at[-1] + 1] = laid
    for e in merged:  # the redeploy also found what an interrupted run left
        if e.scenarios == {REDEPLOY.name} and (LEFTOVER_HASH in e.key or e.req.step == "lock"):
            e.scenarios, e.extra = set(names), LEFTOVERS[e.req.step == "lock"]
    described = {s.name: s.description for s, _ in traces}
    return [_shown(e, names, described, bench_requests) for e in merged]


def _lay_over(merged: list[_Entry], other: list[_Entry], name: str) -> list[_Entry]:
    """`other`'s requests laid over `merged`: the same ones marked as sent in `name` too,
    the others inserted where they fall."""
    matcher = difflib.SequenceMatcher(None, [e.key for e in merged], [e.key for e in other],
                                      autojunk=False)
    out: list[_Entry] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for e, o in zip(merged[i1:i2], other[j1:j2], strict=True):
                e.scenarios.add(name)
                e.count = max(e.count, o.count)
                out.append(e)
        else:
            out += merged[i1:i2] + other[j1:j2]
    return out


# the branches a request is sent in, where they say something shorter together
_TOGETHER = {frozenset({FIRST.name, REDEPLOY.name}): "when the candidate is promoted",
             frozenset({REDEPLOY.name, REJECTED.name}): "when production exists",
             frozenset({REDEPLOY.name}): "when production exists and the candidate is "
                                         "promoted"}


def _shown(e: _Entry, names: list[str], described: dict[str, str], bench_requests: int
           ) -> AwsRequest:
    when = [e.extra] if e.extra else []
    if e.req.when and e.req.service != "sagemaker-runtime":
        when.append(e.req.when)
    if len(e.scenarios) < len(names):
        when.append(_TOGETHER.get(frozenset(e.scenarios)) or "only in " + " and ".join(
            described[n] for n in names if n in e.scenarios))
    if e.req.step == "benchmark" and e.req.service == "sagemaker-runtime":
        # recorded with one request per level (_Steps.benchmark)
        when.append(f"x {bench_requests}: the benchmark's requests, concurrently")
    elif e.count > 1:
        when.append(f"x {e.count} in a recorded run (polls repeat until the status "
                    "settles)" if e.req.operation.startswith("Describe") else
                    f"x {e.count} in a recorded run")
    params = _placeholders(e.req)
    return e.req.model_copy(update={"params": params, "when": "; ".join(when) or None})


def _placeholders(req: AwsRequest) -> dict[str, Any]:
    """Names the account made up shown as unknown; bodies whose text is the run's (a lease,
    a benchmark, a report) by what they are."""
    params = dict(req.params)
    if req.service == "s3" and "Body" in params and not str(params.get("Key", "")).endswith(
            "serving.properties"):
        params["Body"] = f"<{str(params.get('Key', '')).rsplit('/', 1)[-1]}>"
    if "IfMatch" in params:
        params["IfMatch"] = '"<ETag the run read or wrote last>"'
    text = json.dumps(params, default=_bytes)
    for made_up in (EARLIER_HASH, LEFTOVER_HASH):
        text = text.replace(made_up, SHOWN_HASH)
    return _restore_bytes(json.loads(text))


def _bytes(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"__bytes__": bytes(value).decode("latin-1")}
    return str(value)


def _restore_bytes(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__bytes__"}:
        return value["__bytes__"].encode("latin-1")
    if isinstance(value, dict):
        return {k: _restore_bytes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_bytes(v) for v in value]
    return value
