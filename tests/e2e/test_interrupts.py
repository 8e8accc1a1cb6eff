"""An interrupted `lmiflow deploy` (a real process) leaves nothing running: SIGKILL takes the
temporary Prefect API server along (parent-death signal); SIGTERM ends the run the clean way:
candidate removed, report written, API server stopped, exit 128 + 15."""

from __future__ import annotations

import signal

import pytest

from tests.chaos.sandbox import Sandbox, wait_until
from tests.session_files import session_prefect_db

pytestmark = pytest.mark.slow


@pytest.fixture()
def sandbox(tmp_path, tmp_path_factory, demo_model):
    sb = Sandbox(tmp_path / "sb", demo_model, prefect_db=session_prefect_db(tmp_path_factory))
    yield sb
    sb.clean_up()


def test_sigkill_takes_the_api_server_along(sandbox):
    proc = sandbox.start()
    assert wait_until(sandbox.api_servers, 240), sandbox.finish(proc, 1).stderr
    proc.kill()
    proc.wait()
    assert wait_until(lambda: not sandbox.api_servers(), 30), sandbox.api_servers()


def test_sigterm_removes_the_candidate_writes_the_report_and_stops_the_server(sandbox):
    proc = sandbox.start()
    assert sandbox.wait_for_step(proc, "create_endpoint"), sandbox.finish(proc, 1).stderr
    proc.send_signal(signal.SIGTERM)
    done = sandbox.finish(proc, 180)
    assert done.code == 128 + signal.SIGTERM, done.stderr
    assert done.last_line.startswith("lmiflow: interrupted by SIGTERM"), done.stderr
    assert "Traceback" not in done.stderr
    report = sandbox.report()
    assert report is not None and report["status"] == "failed"
    assert report["error"] == "interrupted (SIGTERM) during create_endpoint"
    assert report["cleanup"], report["cleanup"]
    # nothing left at all: there was no production to keep
    assert wait_until(lambda: sandbox.leaks() == ([], []), 15), sandbox.leaks()


def test_an_api_server_that_cannot_start_is_one_line_and_creates_nothing(sandbox):
    broken = {"PREFECT_API_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:////proc/none/x.db"}
    done = sandbox.deploy(env=broken, timeout_s=600)
    assert done.code == 1, done.stderr
    assert done.last_line.startswith("lmiflow: error: the temporary Prefect API server did not "
                                     "start (3 tries"), done.stderr
    assert "Traceback" not in done.stderr
    assert sandbox.processes() == {} and sandbox.registry()["endpoints"] == {}


def _deploy_production_here(sandbox, monkeypatch, report_dir) -> None:
    """The sandbox's config deployed by the flow in this process, on the session's Prefect
    API, into the sandbox's state directory: production for a test whose subject is a later
    `lmiflow deploy` process (a CLI deploy here would add a process and its own API server,
    about 10 s of CPU, to show nothing more)."""
    from lmiflow import pipeline
    from lmiflow.spec import load_spec
    from tests import hf_settings
    from tests.e2e.flows import run

    for key in ("LMIFLOW_STATE_DIR", "LMIFLOW_RETRY_BASE_S", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(key, sandbox.env[key])  # what the sandbox's processes get
    hf_settings.sync(monkeypatch)
    pipeline._target.cache_clear()
    try:
        state, report = run(load_spec(sandbox.config), report_dir)
    finally:
        pipeline._target.cache_clear()
    assert state.is_completed(), report["error"]


def test_sigterm_while_a_request_waits_on_a_silent_production_ends_in_seconds(
        sandbox, prefect_harness, monkeypatch, tmp_path):
    """SIGTERM while the benchmark waits on production (stopped: it answers nothing) during
    a production_now comparison: the run cleans up and the process ends within seconds of
    its report, not when the waiting request's timeout (here 120 s) runs out."""
    import os
    import time

    import yaml

    _deploy_production_here(sandbox, monkeypatch, tmp_path / "first-report")
    pid = sandbox.production()["process"]["pid"]
    cfg = yaml.safe_load(sandbox.config.read_text())
    cfg["workload"]["concurrency"] = 3  # another candidate
    cfg["regression"] = {"compare_with": "production_now"}
    cfg["benchmark"]["timeout_s"] = 120
    sandbox.write_config(cfg)
    os.kill(pid, signal.SIGSTOP)
    try:
        proc = sandbox.start()
        assert sandbox.wait_for_step(proc, "benchmark"), sandbox.finish(proc, 1).stderr
        port = sandbox.production()["process"]["port"]
        # production's first request is in flight, waiting (the kernel accepts for it)
        assert wait_until(lambda: _connected_to(port), 120), "no request reached production"
        time.sleep(5)  # still waiting 5 s later: production answers nothing
        assert _connected_to(port)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        report = sandbox.last_report_dir / "report.json"
        assert wait_until(lambda: sandbox.report() and sandbox.report()["status"] == "failed",
                          60)
        reported = time.monotonic() - t0
        done = sandbox.finish(proc, 60)
        ended = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    print(f"SIGTERM: report after {reported:.1f} s, exit after {ended:.1f} s")
    assert done.code == 128 + signal.SIGTERM, done.stderr
    assert report.exists() and ended - reported < 15, (reported, ended)
    assert sandbox.production()["process"]["pid"] == pid  # production untouched
    assert wait_until(lambda: sandbox.leaks() == ([], []), 15), sandbox.leaks()


def _connected_to(port: int) -> bool:
    """An established TCP connection to 127.0.0.1:port exists (/proc/net/tcp, in hex)."""
    from pathlib import Path

    remote = f"0100007F:{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(r.split()[2] == remote and r.split()[3] == "01" for r in rows)
