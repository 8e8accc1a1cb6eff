"""The temporary Prefect API server: start-up is retried on a fresh port, and a server that
never comes up is one line (naming the server's own last log line), not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmiflow.api_server import ApiServer, ApiServerError


def _fake(tmp_path, monkeypatch, healthy_on_attempt: int | None):
    server = ApiServer(tmp_path / "api.log")
    spawned: list[subprocess.Popen] = []

    def spawn():
        server.port = 1
        (tmp_path / "api.log").write_text("starting\nApplication startup failed. Exiting.\n")
        code = "import time; time.sleep(30)" if healthy_on_attempt else "raise SystemExit(3)"
        spawned.append(subprocess.Popen([sys.executable, "-c", code], start_new_session=True))
        return spawned[-1]

    monkeypatch.setattr(server, "_spawn", spawn)
    monkeypatch.setattr(server, "_healthy",
                        lambda client: healthy_on_attempt is not None
                        and len(spawned) >= healthy_on_attempt)
    return server, spawned


def test_a_failed_start_is_retried(tmp_path, monkeypatch):
    server, spawned = _fake(tmp_path, monkeypatch, healthy_on_attempt=2)
    server.start(timeout_s=0.5, attempts=3)
    assert len(spawned) == 2 and spawned[0].poll() is not None  # the first one was stopped
    server.stop()
    assert spawned[1].poll() is not None


def test_a_server_that_never_starts_is_one_line(tmp_path, monkeypatch):
    server, spawned = _fake(tmp_path, monkeypatch, healthy_on_attempt=None)
    with pytest.raises(ApiServerError) as exc:
        server.start(timeout_s=5, attempts=2)
    msg = str(exc.value)
    assert "\n" not in msg and len(spawned) == 2
    assert "2 tries; exited with status 3" in msg and "Application startup failed" in msg
    assert "PREFECT_API_URL" in msg
