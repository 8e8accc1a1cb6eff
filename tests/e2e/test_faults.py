"""The fault matrix: each test injects a fault, checks the outcome, and checks that every
resource the run created for the candidate is gone (resources before = after) and production
is untouched unless the promotion completed.

Faults of control flow (throttling, a wait that times out, smoke and invoke errors, a failing
rerun, an interrupted promotion, an unwritable report directory) run the real flow on the
in-memory target (tests/core/memory_target.py): no model server is needed to show them. What
only real processes show stays on the local target: a server killed mid-benchmark, a killed
deploy, a production that dies, concurrent runs. The failure-path tests run against a live
production: after each failed candidate, production still serves the same config and model
(on the local target: with the same instance count, from the same server process), and still
answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.e2e.flows import make_spec, prefect_api_env, run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CONTROL_PLANE = ("stage", "create_model", "create_endpoint_config", "create_endpoint",
                 "update_endpoint", "describe", "list_resources", "delete_endpoint",
                 "delete_endpoint_config", "delete_model", "config_model_name")


def throttling(op: str) -> ClientError:
    return ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"},
                        "ResponseMetadata": {"HTTPStatusCode": 400}}, op)


def test_throttling_on_every_control_plane_call_is_retried(prefect_harness, demo_model,
                                                           state_dir, tmp_path, monkeypatch,
                                                           memory_flow_target):
    t = memory_flow_target
    throttled: set[str] = set()
    for name in CONTROL_PLANE:
        real = getattr(t, name)

        def once(*a, _real=real, _name=name, **k):
            if _name not in throttled:  # the first call of each operation is throttled
                throttled.add(_name)
                raise throttling(_name)
            return _real(*a, **k)

        monkeypatch.setattr(t, name, once)
    state, report = run(make_spec(demo_model, name="f-throttle"), tmp_path / "r")
    assert state.is_completed(), report["error"]
    assert report["status"] == "promoted"
    # each operation the run used was throttled once and then succeeded
    assert {"stage", "create_model", "create_endpoint_config", "create_endpoint", "describe",
            "list_resources", "delete_endpoint"} <= throttled
    monkeypatch.undo()
    res = t.list_resources("f-throttle")
    assert res["endpoints"] == ["f-throttle"] and len(res["endpoint_configs"]) == 1


class Production:
    """A live production endpoint on the local target, and what it looked like when deployed."""

    name = "f-prod"

    def __init__(self, state_dir: Path, demo_model):
        from lmiflow.targets.local import LocalTarget

        self.state_dir = state_dir
        self.demo_model = demo_model
        self.target = LocalTarget(state_dir)
        self.before: dict = {}
        self.resources_before: dict = {}

    def deploy(self, tmp_path_factory) -> None:
        """First deploy through the flow; records what production looks like and checks
        that it owns exactly one model, endpoint config and endpoint."""
        state, report = run(make_spec(self.demo_model, name=self.name),
                            tmp_path_factory.mktemp("prod-report"))
        assert state.is_completed(), report["error"]
        self.before = self.snapshot()
        self.resources_before = self.target.list_resources(self.name)
        assert self.resources_before == {"models": [self.before["model"]],
                                         "endpoint_configs": [self.before["config"]],
                                         "endpoints": [self.name]}

    def candidate_spec(self, **over):
        """Same endpoint, another candidate (a different batch size: a different spec hash)."""
        return make_spec(self.demo_model, name=self.name,
                         **{"workload.concurrency": 2, **over})

    def snapshot(self) -> dict:
        st = self.target.describe(self.name)
        reg = json.loads((self.state_dir / "registry.json").read_text())
        return {"status": st.status, "config": st.config_name,
                "model": self.target.config_model_name(st.config_name),
                "instance_count": reg["endpoint_configs"][st.config_name]["variant"][
                    "instance_count"],
                "pid": reg["endpoints"][self.name]["process"]["pid"]}

    def assert_untouched(self) -> None:
        """Same config, model, instance count and server process; still answering; and the
        failed candidate left nothing: the resources are production's alone, as before."""
        from lmiflow import pipeline

        assert self.snapshot() == self.before
        assert self.target.list_resources(self.name) == self.resources_before
        body = self.target.invoke(self.name, {"inputs": "Hello",
                                              "parameters": {"max_new_tokens": 4}})
        passed, _, why = pipeline.check_smoke_response(body)
        assert passed, why


class MemoryProduction(Production):
    """A production endpoint on the in-memory target (no process: what it serves is its
    record, which a failed candidate must leave as it was)."""

    def __init__(self, target, demo_model):
        self.target = target
        self.demo_model = demo_model
        self.before: dict = {}
        self.resources_before: dict = {}

    def snapshot(self) -> dict:
        st = self.target.describe(self.name)
        return {"status": st.status, "config": st.config_name,
                "model": self.target.config_model_name(st.config_name), "since": st.since}


@pytest.fixture
def memory_production(prefect_harness, demo_model, state_dir, memory_flow_target,
                      tmp_path_factory):
    """Production deployed by the flow on the in-memory target, for one test."""
    prod = MemoryProduction(memory_flow_target, demo_model)
    prod.deploy(tmp_path_factory)
    return prod


@pytest.fixture(scope="module")
def production(prefect_harness, demo_model, tmp_path_factory):
    """Deployed once; each failure-path test runs a failing candidate of the same endpoint."""
    from lmiflow import pipeline

    state_dir = tmp_path_factory.mktemp("prod-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMIFLOW_STATE_DIR", str(state_dir))
        mp.setenv("LMIFLOW_RETRY_BASE_S", "0.01")
        pipeline._target.cache_clear()
        prod = Production(state_dir, demo_model)
        prod.deploy(tmp_path_factory)
        assert prod.before["status"] == "InService" and prod.before["instance_count"] == 1
        try:
            yield prod
        finally:
            for ep in prod.target.list_endpoints():  # never leave a server running
                prod.target.delete_endpoint(ep.name)
            pipeline._target.cache_clear()


def test_wait_that_exceeds_its_timeout(memory_production, tmp_path):
    memory_production.target.never_in_service = True  # the candidate stays Creating
    spec = memory_production.candidate_spec(**{"promotion.endpoint_timeout_s": 0.2})
    state, report = run(spec, tmp_path / "r")
    assert state.is_failed() and report["failed_step"] == "create_endpoint"
    assert "not InService within" in report["error"]
    memory_production.assert_untouched()


def _candidate_invokes_fail(monkeypatch, target, production: str) -> list[str]:
    """Every invocation but production's answers 424, as a model that failed to load; returns
    the endpoints refused so."""
    from lmiflow.targets.local import InvocationError

    real = target.invoke
    refused: list[str] = []

    def broken(name, payload, *a, **k):
        if name == production:
            return real(name, payload, *a, **k)
        refused.append(name)
        raise InvocationError(424, b'{"code": 424, "error": "model failed (injected)"}')

    monkeypatch.setattr(target, "invoke", broken)
    return refused


def test_smoke_test_invoke_error(memory_production, tmp_path, monkeypatch):
    prod = memory_production
    refused = _candidate_invokes_fail(monkeypatch, prod.target, prod.name)
    state, report = run(prod.candidate_spec(), tmp_path / "r")
    assert state.is_failed() and report["failed_step"] == "smoke_test"
    assert report["smoke_test"]["passed"] is False
    assert refused == [report["candidate_endpoint"]]  # asked once, not retried
    prod.assert_untouched()


def test_invoke_errors_during_benchmark_go_to_the_gate(memory_production, tmp_path,
                                                       monkeypatch):
    from lmiflow.targets.local import InvocationError

    prod = memory_production
    real = prod.target.invoke_stream
    calls = {"n": 0}

    def flaky(name, payload, *a, **k):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise InvocationError(503, b'{"code": 503, "error": "overloaded (injected)"}')
        return real(name, payload, *a, **k)

    monkeypatch.setattr(prod.target, "invoke_stream", flaky)
    state, report = run(prod.candidate_spec(), tmp_path / "r")
    assert state.is_failed() and report["status"] == "rejected"  # the error_rate <= 0 gate decides
    levels = report["benchmark"]["levels"]
    assert all(0 < lv["error_rate"] < 1 for lv in levels)
    prod.assert_untouched()


@pytest.mark.xdist_group("faults-production")  # one `production` (module fixture)
def test_server_crash_mid_benchmark(production, tmp_path):
    from lmiflow.tasks.common import add_progress_listener

    killed: list[int] = []
    candidate_prefix = f"{production.name}-c-"

    def kill_candidate(step, fraction, text):
        if step == "benchmark" and not killed:
            reg = json.loads((production.state_dir / "registry.json").read_text())
            for name, rec in reg["endpoints"].items():
                if name.startswith(candidate_prefix):
                    killed.append(rec["process"]["pid"])
                    os.kill(rec["process"]["pid"], signal.SIGKILL)

    remove = add_progress_listener(kill_candidate)
    try:
        state, report = run(production.candidate_spec(**{"benchmark.requests": 12}),
                            tmp_path / "r")
    finally:
        remove()
    assert killed and production.before["pid"] not in killed
    assert state.is_failed() and report["status"] in ("rejected", "failed")
    if report["status"] == "rejected":
        assert any(lv["errors"] > 0 for lv in report["benchmark"]["levels"])
    production.assert_untouched()


@pytest.mark.xdist_group("faults-production")  # one `production` (module fixture)
def test_a_stopped_production_ends_a_production_now_comparison_in_time(production, tmp_path):
    """Production's server stopped (SIGSTOP: it accepts connections, answers nothing) while
    a candidate is compared with it: the benchmark's request to production waits out its
    timeout once, the run fails naming that deadline, the outcome says production is not
    answering, the candidate is removed and production is left as it was."""
    timeout_s = 3.0
    spec = production.candidate_spec(**{"regression.compare_with": "production_now",
                                        "benchmark.timeout_s": timeout_s})
    pid = production.before["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        state, report = run(spec, tmp_path / "r")
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    bench = next(s for s in report["steps"] if s["name"] == "benchmark")
    print(f"stopped production: run ended after {took:.1f} s, benchmark step "
          f"{bench['seconds']:.1f} s")
    assert state.is_failed() and report["status"] == "failed"
    assert report["failed_step"] == "benchmark"
    assert f"{production.name} is not answering" in report["error"]
    assert "per-request timeout of 3 s (benchmark.timeout_s)" in report["error"]
    assert report["outcome"]["headline"].startswith(
        f"FAILED at benchmark; production {production.name} is not answering")
    assert report["production"]["answering"] is False
    # one timeout for production's probe, and the candidate's probe and levels beside it
    assert bench["seconds"] < timeout_s + 30
    production.assert_untouched()


def test_failing_rerun_of_production_spec_keeps_production_config(memory_production, tmp_path,
                                                                  monkeypatch):
    """A rerun of the spec production runs has the same names: its candidate's endpoint config
    and model ARE production's. When that rerun fails, cleanup removes the candidate endpoint
    and must leave the config and model production serves."""
    prod = memory_production
    _candidate_invokes_fail(monkeypatch, prod.target, prod.name)
    state, report = run(make_spec(prod.demo_model, name=prod.name), tmp_path / "r")
    assert state.is_failed() and report["failed_step"] == "smoke_test"
    assert report["candidate_endpoint"].startswith(f"{prod.name}-c-")
    assert report["cleanup"] == [f"endpoint {report['candidate_endpoint']}"]
    prod.assert_untouched()


def _lmiflow(cfg: Path, report_dir: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmiflow", "deploy", str(cfg),
                             "--report-dir", str(report_dir)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _env(state_dir: Path) -> dict:
    return {**os.environ, "LMIFLOW_STATE_DIR": str(state_dir), **prefect_api_env()}


def _write(spec, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return path


def test_killed_during_create_endpoint_then_rerun(prefect_harness, demo_model, state_dir,
                                                 tmp_path):
    from lmiflow.targets.local import LocalTarget

    spec = make_spec(demo_model, name="f-kill")
    cfg = _write(spec, tmp_path / "cfg.yaml")
    proc = _lmiflow(cfg, tmp_path / "r1", _env(state_dir))
    target = LocalTarget(state_dir)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        eps = target.list_resources("f-kill")["endpoints"]
        if eps:  # the candidate endpoint exists: kill lmiflow in create_endpoint
            proc.kill()
            break
        if proc.poll() is not None:
            pytest.fail("deploy ended before create_endpoint: " + proc.stdout.read().decode())
        time.sleep(0.05)
    proc.wait(30)
    left = target.list_resources("f-kill")
    assert left["endpoints"] and left["models"]  # what the killed run left behind
    state, report = run(spec, tmp_path / "r2")
    assert state.is_completed(), report["error"]
    res = target.list_resources("f-kill")
    # no duplicates: production, and the one config and model it serves
    assert res["endpoints"] == ["f-kill"]
    assert len(res["endpoint_configs"]) == 1 and len(res["models"]) == 1


def test_promotion_interrupted_before_candidate_deleted(prefect_harness, demo_model, state_dir,
                                                        tmp_path, memory_flow_target):
    """The state a crash between update(production) and delete(candidate) leaves: production
    on the candidate's config and the candidate still running. A rerun completes it (control
    flow: on the in-memory target)."""
    spec = make_spec(demo_model, name="f-promo")
    state, report = run(spec, tmp_path / "r1")
    assert state.is_completed(), report["error"]
    target = memory_flow_target
    prod = target.describe("f-promo")
    candidate = report["candidate_endpoint"]
    target.create_endpoint(candidate, prod.config_name, {"project": "lmiflow"})
    target.wait(candidate, 120)
    assert candidate in target.list_resources("f-promo")["endpoints"]
    state, report = run(spec, tmp_path / "r2")
    assert state.is_completed(), report["error"]
    res = target.list_resources("f-promo")
    assert res["endpoints"] == ["f-promo"]
    assert res["endpoint_configs"] == [prod.config_name]
    assert target.describe("f-promo").config_name == prod.config_name


def test_concurrent_runs(prefect_harness, demo_model, state_dir, tmp_path):
    """Two deploys of one endpoint are serialized (the local endpoint lock) and production ends
    consistent; a deploy of another endpoint started with them proceeds in parallel with the
    one holding the lock (three processes at once: a lock wider than one endpoint would
    serialize all three)."""
    from lmiflow.targets.local import LocalTarget

    env = _env(state_dir)
    specs = {"a": make_spec(demo_model, name="f-same"),
             "b": make_spec(demo_model, name="f-same", **{"workload.concurrency": 2}),
             "c": make_spec(demo_model, name="f-other")}
    procs = {k: _lmiflow(_write(specs[k], tmp_path / f"{k}.yaml"), tmp_path / k, env)
             for k in specs}
    outs = {k: p.communicate(timeout=600)[0].decode() for k, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), outs
    reports = {k: json.loads((tmp_path / k / "report.json").read_text()) for k in specs}
    start = lambda r: r["steps"][0]["started_at"]  # noqa: E731
    end = lambda r: max(s["started_at"] + s["seconds"] for s in r["steps"]  # noqa: E731
                        if s["started_at"])
    first, second = sorted((reports["a"], reports["b"]), key=start)
    assert end(first) <= start(second), "runs on one endpoint overlapped"
    target = LocalTarget(state_dir)
    res = target.list_resources("f-same")
    assert res["endpoints"] == ["f-same"] and len(res["endpoint_configs"]) == 1
    assert target.describe("f-same").config_name.endswith(second["candidate_endpoint"][-8:])
    rc = reports["c"]
    assert start(rc) < end(first) and start(first) < end(rc), \
        "another endpoint's run waited for the lock of f-same"
    assert target.list_resources("f-other")["endpoints"] == ["f-other"]


def test_a_report_dir_that_cannot_take_the_report_does_not_undo_a_promotion(
        prefect_harness, demo_model, state_dir, tmp_path, memory_flow_target):
    from lmiflow.flows.deploy import deploy_llm

    from lmiflow.run_record import fallback_report_dirs

    (tmp_path / "file").write_text("")  # the report dir's parent is a file: every write fails
    state = deploy_llm(make_spec(demo_model, name="f-report"),
                       report_dir=str(tmp_path / "file" / "r"), return_state=True)
    assert state.is_completed(), state.message
    run_id = str(state.state_details.flow_run_id)
    path = fallback_report_dirs("f-report", run_id)[0] / "report.json"
    report = json.loads(path.read_text())
    assert report["status"] == "promoted" and report["run_id"] == run_id
    assert path.is_relative_to(state_dir)
    assert memory_flow_target.describe("f-report").status == "InService"  # not undone


def test_a_failed_production_is_replaced_only_when_allowed(prefect_harness, demo_model,
                                                           state_dir, tmp_path):
    from lmiflow.targets.local import LocalTarget

    target = LocalTarget(state_dir)
    state, first = run(make_spec(demo_model, name="f-failed"), tmp_path / "r1")
    assert state.is_completed(), first["error"]
    pid = json.loads((state_dir / "registry.json").read_text())["endpoints"]["f-failed"][
        "process"]["pid"]
    os.kill(pid, signal.SIGKILL)  # production dies
    deadline = time.monotonic() + 30
    while target.describe("f-failed").status != "Failed" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert target.describe("f-failed").status == "Failed"
    before = target.list_resources("f-failed")

    new = {"workload.concurrency": 2}  # a different candidate than the one that failed
    state, refused = run(make_spec(demo_model, name="f-failed", **new), tmp_path / "r2")
    assert state.is_failed() and refused["failed_step"] == "preflight"
    assert "promotion.replace_failed" in refused["error"]
    assert target.list_resources("f-failed") == before  # nothing created

    state, repaired = run(make_spec(demo_model, name="f-failed", **new,
                                    **{"promotion.replace_failed": True}), tmp_path / "r3")
    assert state.is_completed(), repaired["error"]
    assert repaired["promotion"]["action"] == "replaced the Failed production"
    prod = target.describe("f-failed")
    assert prod.status == "InService"
    assert prod.config_name.endswith(repaired["candidate_endpoint"][-8:])
    res = target.list_resources("f-failed")
    assert res["endpoints"] == ["f-failed"] and len(res["endpoint_configs"]) == 1


def test_a_production_killed_during_a_comparison_is_reported_failed_not_serving(
        prefect_harness, demo_model, state_dir, tmp_path):
    """Production's server dies while a candidate is compared with it (production_now): the
    outcome reads production's state (Failed, serving nothing), never "production unchanged:
    ... still serving"; the candidate is not promoted over it and is removed."""
    from lmiflow.tasks.common import add_progress_listener

    from lmiflow.targets.local import LocalTarget

    state, first = run(make_spec(demo_model, name="f-died"), tmp_path / "r1")
    assert state.is_completed(), first["error"]
    pid = json.loads((state_dir / "registry.json").read_text())["endpoints"]["f-died"][
        "process"]["pid"]
    killed: list[int] = []

    def kill_production(step, fraction, text):
        if step == "benchmark" and not killed:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    remove = add_progress_listener(kill_production)
    try:
        state, report = run(make_spec(demo_model, name="f-died", **{
            "workload.concurrency": 2, "regression.compare_with": "production_now"}),
            tmp_path / "r2")
    finally:
        remove()
    assert killed and state.is_failed()
    assert report["production"]["status"] == "Failed"
    headline = report["outcome"]["headline"]
    assert "still serving" not in headline and "unchanged" not in headline, headline
    assert "production f-died is Failed and serves nothing" in headline, headline
    target = LocalTarget(state_dir)
    assert target.list_resources("f-died")["endpoints"] == ["f-died"]  # candidate removed
