"""The local target's model-server processes: start, recognize, stop, reap.

A server outlives the CLI that started it (own session, own process group), so a later process
finds it through the registry record this module writes: its pid and the kernel's start time
for that pid (/proc/<pid>/stat field 22). The pair names one process for the life of the
machine: a pid that was recycled for another process, or a process of another project whose
command line happens to look like ours, has another start time and is never taken for ours,
never signalled. Where there is no /proc (macOS) only kill(0) can tell, as before.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmiflow.serving.health import NONCE_ENV, NONCE_HEADER

FAILED_MARK = "lmiflow-server FAILED: "  # serving.server prints it (kept in sync by a test)
STOP_GRACE_S = 10.0
_children: dict[int, subprocess.Popen] = {}  # servers this process started: reaped on poll


def free_port() -> int:
    """A port free on 127.0.0.1 now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces and parentheses):
    [0] is the state, [19] the start time (field 22 of proc(5)); None without /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_ticks(pid: int) -> int | None:
    """When pid started, in clock ticks since boot (None where /proc is missing)."""
    fields = _stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def start_server(python: str, model_dir: str, port: int, log_path: Path, env: dict[str, str],
                 cwd: Path) -> dict[str, Any]:
    """Start `python -m lmiflow.serving.server` in its own session, stdout and stderr to
    log_path; return its identity record (pid, start_ticks, and the nonce it echoes on
    /ping, which ping() checks) for the registry."""
    nonce = secrets.token_hex(16)
    return {**start_module(python, ["lmiflow.serving.server", "--model-dir", model_dir,
                                    "--port", str(port), "--host", "127.0.0.1"], log_path,
                           {**env, NONCE_ENV: nonce}, cwd), "nonce": nonce}


def start_module(python: str, args: list[str], log_path: Path, env: dict[str, str],
                 cwd: Path) -> dict[str, Any]:
    """`python -m <args>` in its own session (it outlives us), output to log_path; returns
    its identity record (pid, start_ticks)."""
    cmd = [python, "-m", *args]
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1"}, cwd=str(cwd), start_new_session=True,
            close_fds=True,
        )
    _children[proc.pid] = proc
    # Not reaped until we wait for it, so the pid cannot be reused before this read.
    return {"pid": proc.pid, "start_ticks": start_ticks(proc.pid)}


def process_alive(proc: Mapping[str, Any]) -> bool:
    """True when the server a registry record names still runs (not a zombie, not a recycled
    pid, not someone else's process)."""
    pid = proc["pid"]
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, under another user: the start time below still tells whose it is
    fields = _stat(pid)
    if fields is None:
        return True  # no /proc (macOS): kill(0) is all we have
    if fields[0] in ("Z", "X"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    recorded = proc.get("start_ticks")
    return recorded is not None and len(fields) > 19 and int(fields[19]) == recorded


def stop_server(proc: Mapping[str, Any], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after grace_s, reap it; then
    wait (briefly) until its port no longer accepts connections: the kernel can keep a dead
    listener's socket for a moment after the process is reaped."""
    pid = proc["pid"]
    if process_alive(proc):
        _signal_until_gone(proc, grace_s)
    _children.pop(pid, None)
    deadline = time.monotonic() + 5.0
    while port_in_use(proc["port"]) and time.monotonic() < deadline:
        time.sleep(0.05)


def stop_process(proc: Mapping[str, Any], grace_s: float = STOP_GRACE_S) -> None:
    """stop_server for a process that listens on no port (the local scaler)."""
    if process_alive(proc):
        _signal_until_gone(proc, grace_s)
    _children.pop(proc["pid"], None)


def _signal_until_gone(proc: Mapping[str, Any], grace_s: float) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc["pid"], sig)  # start_new_session: the group id is the server's pid
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not process_alive(proc):
                return
            time.sleep(0.05)


def exit_reason(proc: Mapping[str, Any]) -> str:
    """Why a server is gone: its exit status when this process started it, and its log."""
    child = _children.get(proc["pid"])
    code = child.poll() if child is not None else None
    head = f"server process {proc['pid']} exited"
    if code == -signal.SIGKILL:
        head += " (killed by SIGKILL: out of memory, or by hand)"
    elif code:
        head += f" with status {code}"
    why = failure_from_log(Path(proc["log"]))
    return f"{head}: {why}" if why else head


def failure_from_log(path: Path, limit: int = 600) -> str | None:
    """The server's own FAILED line, else the last non-empty lines of its log."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 64_000))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if FAILED_MARK in line:
            return line.split(FAILED_MARK, 1)[1].strip()[:limit]
    tail = [ln.strip() for ln in lines if ln.strip()][-2:]
    return " | ".join(tail)[:limit] or None


def ping(port: int, nonce: str | None = None) -> bool:
    """The server on port is healthy, and (given its nonce) is the one we started: a
    process that took the port first answers without it (or with another)."""
    import httpx

    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2.0)
    except httpx.HTTPError:
        return False
    return resp.status_code == 200 and (nonce is None
                                        or resp.headers.get(NONCE_HEADER) == nonce)
