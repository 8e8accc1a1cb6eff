"""Real `lmiflow deploy` processes in a private sandbox, and what they leave behind.

A sandbox is a directory with its own LMIFLOW_STATE_DIR, PREFECT_HOME (so its own Prefect
database and API server), config and reports. Every process a deploy starts inherits the
sandbox's environment, so `processes()` finds all of them (the CLI, its Prefect API server,
model servers) by their environment, whatever their parent: an orphan is found as surely as a
child. Used by the interrupt tests and by the fault matrix (`make chaos`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
NAME = "chaos"


def wait_until(predicate: Callable[[], object], timeout_s: float, every_s: float = 0.2):
    """predicate()'s first truthy value, or None after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value or None
        time.sleep(every_s)


def demo_config(model_dir: Path, name: str = NAME) -> dict:
    """The demo config, made quick: small benchmark, a generous latency gate (the point here
    is what survives a fault, not how fast the demo model is)."""
    cfg = yaml.safe_load((ROOT / "configs" / "local-demo.yaml").read_text())
    cfg["name"] = name
    cfg["model"]["id"] = str(model_dir)
    cfg["benchmark"].update(concurrency=[1, 2], requests=4, warmup_requests=1, input_tokens=16,
                            max_new_tokens=8)
    cfg["workload"]["concurrency"] = 2
    cfg["autoscaling"]["target"] = 2  # one copy's batch at this concurrency: no copy is added
    cfg["gates"] = [{"metric": "error_rate", "stat": "value", "op": "<=", "threshold": 0.0}]
    cfg.pop("regression", None)
    cfg["promotion"]["endpoint_timeout_s"] = 300
    return cfg


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def last_line(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else ""


class Sandbox:
    def __init__(self, root: Path, model_dir: Path, name: str = NAME,
                 prefect_db: Path | None = None):
        """prefect_db: a migrated Prefect database (tests/session_files.py) that the first
        API server starts from, instead of migrating an empty one (about 12 s of CPU)."""
        self.root = root.resolve()
        self.name = name
        self.state = self.root / "state"
        self.prefect_home = self.root / "prefect"
        self.reports = self.root / "reports"
        self.config = self.root / "config.yaml"
        self.root.mkdir(parents=True, exist_ok=True)
        if prefect_db is not None:
            from tests.session_files import seed_prefect_db

            seed_prefect_db(prefect_db, self.prefect_home / "prefect.db")
        self.write_config(demo_config(model_dir, name))
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("PREFECT_", "LMIFLOW_"))}
        self.env.update(LMIFLOW_STATE_DIR=str(self.state), PREFECT_HOME=str(self.prefect_home),
                        PREFECT_SERVER_ANALYTICS_ENABLED="false", LMIFLOW_RETRY_BASE_S="0.05",
                        HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self._marker = f"LMIFLOW_STATE_DIR={self.state}".encode()
        self._n = 0

    def write_config(self, cfg: dict) -> None:
        self.config.write_text(yaml.safe_dump(cfg))

    # ---- running deploys ------------------------------------------------------------------

    def start(self, *args: str, report_dir: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        self._n += 1
        out = self.root / f"run-{self._n}"
        self.last_report_dir = report_dir or self.reports
        cmd = [sys.executable, "-m", "lmiflow", "deploy", str(self.config),
               "--report-dir", str(self.last_report_dir), *args]
        proc = subprocess.Popen(cmd, cwd=self.root, env={**self.env, **(env or {})},
                                stdout=open(f"{out}.out", "w"),  # noqa: SIM115
                                stderr=open(f"{out}.err", "w"),  # noqa: SIM115
                                start_new_session=True)
        proc.started = time.monotonic()  # type: ignore[attr-defined]
        proc.out_base = out  # type: ignore[attr-defined]
        return proc

    def finish(self, proc: subprocess.Popen, timeout_s: float = 600) -> Finished:
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        base = proc.out_base  # type: ignore[attr-defined]
        return Finished(code, Path(f"{base}.out").read_text(), Path(f"{base}.err").read_text(),
                        time.monotonic() - proc.started)  # type: ignore[attr-defined]

    def deploy(self, *args: str, timeout_s: float = 600, **kw) -> Finished:
        return self.finish(self.start(*args, **kw), timeout_s)

    def step_state(self, step: str) -> str | None:
        """The newest task run of `step` in the sandbox's Prefect database (RUNNING, ...)."""
        db = self.prefect_home / "prefect.db"
        if not db.exists():
            return None
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True,
                                                    timeout=1)) as c:
                row = c.execute("select state_type from task_run where name like ? "
                                "order by created desc limit 1", (f"{step}-%",)).fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    def wait_for_step(self, proc: subprocess.Popen, step: str, timeout_s: float = 300) -> bool:
        return bool(wait_until(lambda: proc.poll() is not None
                               or self.step_state(step) == "RUNNING", timeout_s)
                    and proc.poll() is None)

    def report(self) -> dict | None:
        path = self.last_report_dir / "report.json"
        with contextlib.suppress(OSError, ValueError):
            return json.loads(path.read_text())
        return None

    # ---- what is left -----------------------------------------------------------------------

    def processes(self) -> dict[int, str]:
        """pid -> command line of every live process started from this sandbox."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if self._marker not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    continue
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            found[int(entry.name)] = cmd.strip()
        return found

    def api_servers(self) -> dict[int, str]:
        return {p: c for p, c in self.processes().items() if "prefect.server.api" in c}

    def registry(self) -> dict:
        try:
            data = json.loads((self.state / "registry.json").read_text())
        except (OSError, ValueError):
            data = {}
        for key in ("models", "endpoint_configs", "endpoints"):
            data.setdefault(key, {})
        return data

    def production(self) -> dict | None:
        return self.registry()["endpoints"].get(self.name)

    def leaks(self) -> tuple[list[str], list[str]]:
        """(processes, resources) that should not exist once no deploy runs: anything but
        production's own server process, and any endpoint, config or model production does
        not use."""
        reg = self.registry()
        prod = reg["endpoints"].get(self.name)
        keep_pids, keep = set(), set()
        if prod:
            keep_pids = {p["pid"] for p in (prod.get("process"), prod.get("pending"),
                                            prod.get("scaler"), *prod.get("copies", [])) if p}
            config = reg["endpoint_configs"].get(prod["config_name"])
            keep = {self.name, prod["config_name"]} | ({config["model_name"]} if config else set())
        procs = [f"{pid} {cmd[:80]}" for pid, cmd in self.processes().items()
                 if pid not in keep_pids]
        resources = [f"{kind[:-1]} {n}" for kind in ("endpoints", "endpoint_configs", "models")
                     for n in reg[kind] if n not in keep]
        return procs, resources

    def inconsistencies(self) -> list[str]:
        """Registry records that point at nothing: production without its config, model or
        staged files, or a serving record whose process is dead."""
        reg, out = self.registry(), []
        prod = reg["endpoints"].get(self.name)
        if prod is None:
            return out
        config = reg["endpoint_configs"].get(prod["config_name"])
        if config is None:
            return [f"production's config {prod['config_name']} is missing"]
        model = reg["models"].get(config["model_name"])
        if model is None:
            return [f"production's model {config['model_name']} is missing"]
        if not (Path(model["model_data"]) / "serving.properties").is_file():
            out.append(f"production's staged files {model['model_data']} are missing")
        if prod["status"] != "InService":
            out.append(f"production is {prod['status']}")
        pid = (prod.get("process") or {}).get("pid")
        if pid and pid not in self.processes():
            out.append(f"production's server {pid} is not running")
        return out

    def clean_up(self) -> None:
        """Delete every endpoint and stop every process this sandbox started."""
        from lmiflow.targets.local import LocalTarget

        if self.state.exists():
            with contextlib.suppress(Exception):
                t = LocalTarget(self.state)
                for ep in t.list_endpoints():
                    t.delete_endpoint(ep.name)
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not self.processes(), 10)
