"""An interrupted `lmiflow deploy` (a real process) leaves nothing running: SIGKILL takes the
temporary Prefect API server along (parent-death signal); SIGTERM ends the run the clean way:
candidate removed, report written, API server stopped, exit 128 + 15."""

from __future__ import annotations

import signal

import pytest

from tests.chaos.sandbox import Sandbox, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture()
def sandbox(tmp_path, demo_model):
    sb = Sandbox(tmp_path / "sb", demo_model)
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
