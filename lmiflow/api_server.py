"""The temporary Prefect API server of one `lmiflow deploy`, tied to the life of its parent.

Without PREFECT_API_URL, Prefect starts an "ephemeral" API server as a plain child process
and stops it from an atexit hook. A SIGKILL (or a default-handled SIGTERM) of the parent runs
no atexit hook, so the server kept running, about 220 MB each, forever; and on a loaded
machine its fixed 20 s start-up wait failed the deploy with a traceback. lmiflow starts the
same server itself instead:

- the child gets a parent-death signal (Linux `PR_SET_PDEATHSIG`), so it dies with the CLI
  even when the CLI is SIGKILLed, and is reaped by `stop()` on every other exit;
- it runs in its own session, so a Ctrl-C in the terminal reaches the CLI only: the run can
  still use the API to remove its candidate and write its report, then stops the server;
- start-up waits are generous and retried on a fresh port; failure is one line naming the
  server's own last log line.

The command line is Prefect's own (prefect.server.api.server.SubprocessASGIServer), which
offers no way to set how its child is started.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

STARTUP_TIMEOUT_S = float(os.environ.get("LMIFLOW_API_STARTUP_TIMEOUT_S", "180"))
STARTUP_ATTEMPTS = 3
_PR_SET_PDEATHSIG = 1


class ApiServerError(RuntimeError):
    """The temporary API server did not come up; the message is one line."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the signal was armed
        os._exit(1)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    """One uvicorn process serving Prefect's API on 127.0.0.1 (a kernel-chosen port)."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _spawn(self) -> subprocess.Popen:
        import prefect
        from prefect.settings import get_current_settings

        self.port = _free_port()
        env = {
            **os.environ,
            # what Prefect sets for its own ephemeral server: no UI, no background services
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
        }
        env.pop("PREFECT_API_URL", None)
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
               "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
               "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=_die_with_parent)

    def _healthy(self, client) -> bool:
        import httpx

        try:
            return client.get(f"{self.api_url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S,
              attempts: int = STARTUP_ATTEMPTS) -> str:
        import httpx

        why = "no attempt made"
        with httpx.Client() as client:
            for _ in range(attempts):
                self.proc = self._spawn()
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    if self.proc.poll() is not None:
                        why = f"exited with status {self.proc.returncode}"
                        break
                    if self._healthy(client):
                        return self.api_url
                    time.sleep(0.2)
                else:
                    why = f"not answering after {timeout_s:.0f} s"
                self.stop()
        last = _last_line(self.log_path)
        raise ApiServerError(f"the temporary Prefect API server did not start ({attempts} tries;"
                             f" {why}){': ' + last if last else ''} (log {self.log_path}); set "
                             "PREFECT_API_URL to use a running server")

    def stop(self, grace_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # its own session: the group id is its pid
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait_s)
                return


def _last_line(path: Path) -> str | None:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()
                 if ln.strip()]
    except OSError:
        return None
    return lines[-1][:300] if lines else None


@contextlib.contextmanager
def prefect_api(log_path: Path) -> Iterator[str | None]:
    """Use the Prefect API the user configured, else a temporary server of our own that
    stops when this block exits (or dies with this process)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    server = ApiServer(log_path)
    try:
        url = server.start()
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain_prefect_workers()
    finally:
        server.stop()


def _drain_prefect_workers(timeout_s: float = 10.0) -> None:
    """Send the logs and events Prefect still queues while the server is there to take them
    (otherwise they fail at exit with "Error logging to API")."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # a worker that never started has nothing queued
            worker.drain_all(timeout=timeout_s, at_exit=False)
