"""Local target: endpoints are model-server processes on 127.0.0.1 that outlive the CLI.

State lives in one directory (env LMIFLOW_STATE_DIR, else the user state dir):
`registry.json` (models, endpoint configs, endpoints; written under a file lock, atomically),
`staged/<name>/` (files from stage()), `logs/<endpoint>-<n>.log` (each server's stdout/stderr),
`locks/` (per-endpoint locks for callers that must serialize deploys), `baselines/` and
`calibration.json` (the latency model's benchmark records, shared by every run here).

The endpoint state machine is advanced by whoever looks (describe, wait, list): Creating turns
InService when /ping answers 200, Failed when the process exits (reason from its log) or the
startup health-check timeout passes; an Updating endpoint switches to its new process once that
one is healthy, then the old one is stopped (blue/green). No daemon is needed. The server
processes themselves (start, recognize, stop, reap) are targets.processes's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmiflow.sizing.autoscaling import ScalingPlan

from lmiflow import patterns
from lmiflow.errors import StateError
from lmiflow.state_files import check_writable, ensure_dir, read_json, write_atomic
from lmiflow.targets.base import (
    EndpointBusy,
    EndpointLock,
    EndpointStatus,
    EndpointVariant,
    ModelFiles,
    Target,
    TrafficPolicy,
    check_name,
)
from lmiflow.targets.processes import (
    exit_reason,
    free_port,
    ping,
    process_alive,
    start_module,
    start_server,
    stop_process,
    stop_server,
)

log = logging.getLogger(__name__)

STATE_FIELD = "LMIFLOW_STATE_DIR"
DEFAULT_STARTUP_TIMEOUT_S = 900
CALIBRATION_FILE = "calibration.json"
INVOKE_TIMEOUT_S = 300.0  # an invocation's wait for its next byte, when the caller sets none
DRAIN_LIMIT_S = 300.0  # a draining copy stops after this even with requests left


class _FileEndpointLock(EndpointLock):
    def __init__(self, lock: Any):
        self.lock = lock

    def __enter__(self) -> _FileEndpointLock:
        self.lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


class InvocationError(RuntimeError):
    """The model server answered an invocation with an error status (body kept for the caller)."""

    def __init__(self, status_code: int, body: bytes):
        self.status_code = status_code
        self.body = body
        super().__init__(f"HTTP {status_code}: {body[:500].decode('utf-8', 'replace')}")


def timeline_path(state_dir: Path, endpoint: str) -> Path:
    """Where the autoscaler of a local endpoint (targets.local_scaler) logs its ticks."""
    return state_dir / "autoscaling" / f"{endpoint}.jsonl"


@contextlib.contextmanager
def _deadline(endpoint: str, timeout_s: float | None) -> Iterator[None]:
    """httpx's timeouts as the TimeoutError Target.invoke promises (what callers catch
    without knowing the target's HTTP client)."""
    import httpx

    try:
        yield
    except httpx.TimeoutException as exc:
        raise TimeoutError(f"{endpoint} sent nothing within "
                           f"{timeout_s or INVOKE_TIMEOUT_S:g} s ({type(exc).__name__})") from exc


def default_state_dir() -> Path:
    env = os.environ.get("LMIFLOW_STATE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_state_dir("lmiflow"))


class RegistryFile:
    """registry.json: read defensively, written atomically with the previous version kept
    beside it (registry.json.bak), so a corrupt file names its path and how to recover."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "registry.json"
        self.backup = state_dir / "registry.json.bak"

    def recovery(self) -> str:
        path, backup = self.path, self.backup
        if backup.is_file():
            return (f"restore the previous version (one change behind) with `cp {backup} "
                    f"{path}`, or start empty with `mv {path} {path}.corrupt`")
        return (f"start empty with `mv {path} {path}.corrupt` (servers it listed keep "
                "running until stopped)")

    def read(self) -> dict[str, dict[str, Any]]:
        data = read_json(self.path, STATE_FIELD, self.recovery()) or {}
        kinds = ("models", "endpoint_configs", "endpoints")
        if not isinstance(data, dict) or not all(isinstance(data.get(k, {}), dict)
                                                 for k in kinds):
            raise StateError(STATE_FIELD, f"{self.path} is corrupt (not a registry): "
                                          f"{self.recovery()}")
        for key in kinds:
            data.setdefault(key, {})
        return data

    def write(self, data: dict) -> None:
        # 0600: model env may hold tokens.
        write_atomic(self.path, json.dumps(data, indent=2, sort_keys=True), STATE_FIELD,
                     keep_previous=self.backup)


class LocalTarget(Target):
    """targets.base.Target on this machine. Nothing is written to the state directory until
    something is created, so planning with this target (a dry run) leaves no trace."""

    kind = "local"

    def __init__(self, state_dir: Path | None = None, python: str | None = None,
                 poll_interval_s: float = 0.25, scaler_tick_s: float = 0.5):
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.python = python or sys.executable
        self.poll_interval_s = poll_interval_s
        self.scaler_tick_s = scaler_tick_s
        self._registry_file = RegistryFile(self.state_dir)

    def _dir(self, sub: str, mode: int | None = None) -> Path:
        return ensure_dir(self.state_dir / sub, STATE_FIELD, mode)

    def check_state(self) -> None:
        """The state directory can be written and its registry read; creates nothing."""
        check_writable(self.state_dir, STATE_FIELD)
        self._registry_file.read()

    def check_properties(self, text: str) -> None:
        """The local server's own limits (serving.options.LIMITS)."""
        from lmiflow.serving.options import check_entries
        from lmiflow.serving.properties_text import parse_entries

        check_entries(parse_entries(text))

    # ---- planning -------------------------------------------------------------------------

    def instance_catalog(self):
        """This machine, as the one row to plan over."""
        from lmiflow.sizing.catalog import catalog_with
        from lmiflow.targets.local_machine import detect

        return catalog_with([detect()])

    def serving_model_id(self, model_id: str, local_dir: str | None) -> str:
        # resolved: the server runs with the state directory as its working directory
        return str(Path(local_dir).resolve()) if local_dir else model_id

    def image_uri(self, backend: str, version: str | None, override: str | None) -> None:
        return None  # the model server runs directly, no container image

    def serving_engine(self, backend: str) -> str:
        return "local"  # lmiflow's own model server, whatever backend the config names

    def endpoint_variant(self, instance_type: str, instance_count: int,
                         weights_bytes: int) -> EndpointVariant:
        return EndpointVariant(instance_type=instance_type, instance_count=instance_count)

    # ---- production's baseline --------------------------------------------------------------

    def _baseline_path(self, endpoint: str) -> Path:
        check_name("endpoint", endpoint)
        return self.state_dir / "baselines" / f"{endpoint}.json"

    def load_baseline(self, endpoint: str) -> dict | None:
        path = self._baseline_path(endpoint)
        return read_json(path, STATE_FIELD, f"remove it with `rm {path}` (the next promotion "
                         "records a new baseline)")

    def save_baseline(self, endpoint: str, data: dict) -> str:
        path = self._baseline_path(endpoint)
        self._dir("baselines")
        write_atomic(path, json.dumps(data, indent=2, sort_keys=True), STATE_FIELD, mode=0o644)
        return str(path)

    # ---- the latency model's calibration store ----------------------------------------------

    @property
    def calibration_path(self) -> Path:
        """calibration.json in the state directory: every run on this machine shares it."""
        return self.state_dir / CALIBRATION_FILE

    def calibration_uri(self) -> str:
        return str(self.calibration_path)

    def load_calibration(self, *, offline: bool = False) -> dict | None:
        path = self.calibration_path
        return read_json(path, STATE_FIELD, f"move it aside (`mv {path} {path}.bad`); the "
                         "next benchmark starts a new store")

    def update_calibration(self, change: Callable[[dict | None], dict]) -> str:
        from filelock import FileLock

        path = self.calibration_path
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # The lock `lmiflow calibrate` takes too: a refit and an append never interleave.
        with FileLock(str(path) + ".lock", timeout=60):
            data = change(self.load_calibration())
            write_atomic(path, json.dumps(data, indent=1), STATE_FIELD, mode=0o644)
        return str(path)

    # ---- registry -------------------------------------------------------------------------

    def _lock(self):
        from filelock import FileLock

        self.state_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.state_dir / "registry.json.lock"), timeout=60)

    def endpoint_lock(self, name: str, run_id: str | None = None,
                      timeout: float = -1) -> EndpointLock:
        """A file lock that serializes deploys of one endpoint across processes of this
        machine (the only place local endpoints live); the OS drops a dead process's lock, so
        it cannot be lost while held. timeout=-1 waits forever; otherwise filelock.Timeout."""
        from filelock import FileLock

        check_name("endpoint", name)
        return _FileEndpointLock(FileLock(str(self._dir("locks") / f"{name}.lock"),
                                          timeout=timeout))

    def _read(self) -> dict[str, dict[str, Any]]:
        return self._registry_file.read()

    def _write(self, data: dict) -> None:
        self._registry_file.write(data)

    @contextlib.contextmanager
    def _registry(self) -> Iterator[dict]:
        """Read-modify-write under the lock."""
        with self._lock():
            data = self._read()
            yield data
            self._write(data)

    # ---- models and configs ---------------------------------------------------------------

    def stage(self, name: str, files: dict[str, str]) -> str:
        check_name("model", name)
        if "serving.properties" not in files:
            raise ValueError("files: serving.properties is required")
        for rel in files:  # all names checked before the first write
            if not patterns.matches(patterns.REL_PATH, rel) or ".." in rel.split("/"):
                raise ValueError(f"file name {rel!r}: a relative path of letters, digits, _.-")
        # Staged files may hold secrets (serving.secret_options): owner-only, like registry.json.
        dest = ensure_dir(self._dir("staged", mode=0o700) / name, STATE_FIELD, mode=0o700)
        for rel, text in files.items():
            path = dest / rel
            ensure_dir(path.parent, STATE_FIELD, mode=0o700)
            write_atomic(path, text, STATE_FIELD, mode=0o600)
        return str(dest)

    def create_model(self, name: str, model_data: str, image_uri: str | None,
                     env: dict[str, str], tags: dict[str, str], *,
                     network_isolation: bool = False) -> None:
        check_name("model", name)
        if network_isolation:  # the server may read only what is on this machine
            env = {**env, "HF_HUB_OFFLINE": "1"}
        if not (Path(model_data) / "serving.properties").is_file():
            raise ValueError(f"model_data {model_data}: no serving.properties there")
        record = {"model_data": str(Path(model_data).resolve()), "image_uri": image_uri,
                  "env": dict(env), "tags": dict(tags), "created": time.time()}
        with self._registry() as reg:
            old = reg["models"].get(name)
            if old is not None:
                if old["model_data"] != record["model_data"] or old["env"] != record["env"]:
                    raise ValueError(f"model {name} exists with other data; delete it first")
                return  # a rerun adopts it
            reg["models"][name] = record

    def create_endpoint_config(self, name: str, model_name: str, variant: EndpointVariant,
                               tags: dict[str, str], component: object = None) -> None:
        check_name("endpoint config", name)
        record = {"model_name": model_name, "variant": variant.model_dump(), "tags": dict(tags),
                  "created": time.time()}
        with self._registry() as reg:
            if model_name not in reg["models"]:
                raise LookupError(f"model {model_name} does not exist")
            old = reg["endpoint_configs"].get(name)
            if old is not None:
                if (old["model_name"], old["variant"]) != (model_name, record["variant"]):
                    raise ValueError(f"endpoint config {name} exists with other settings")
                return
            reg["endpoint_configs"][name] = record

    # ---- processes ------------------------------------------------------------------------

    def _start_server(self, reg: dict, endpoint: str, config_name: str) -> dict[str, Any]:
        config = reg["endpoint_configs"].get(config_name)
        if config is None:
            raise LookupError(f"endpoint config {config_name} does not exist")
        model = reg["models"].get(config["model_name"])
        if model is None:
            raise LookupError(f"model {config['model_name']} does not exist")
        port = free_port()
        logs = self._dir("logs")
        n = len(list(logs.glob(f"{endpoint}-*.log"))) + 1
        log_path = logs / f"{endpoint}-{n}.log"
        identity = start_server(self.python, model["model_data"], port, log_path,
                                {**os.environ, **model["env"]}, self.state_dir)
        log.info("endpoint %s: server pid %d on 127.0.0.1:%d (log %s)", endpoint,
                 identity["pid"], port, log_path)
        timeout = config["variant"].get("container_startup_health_check_timeout_s")
        return {**identity, "port": port, "log": str(log_path), "config_name": config_name,
                "started": time.time(), "startup_timeout_s": timeout or DEFAULT_STARTUP_TIMEOUT_S}

    def _probe(self, proc: dict) -> tuple[str, str | None]:
        """Creating / InService / Failed for one server process."""
        if not process_alive(proc):
            return "Failed", exit_reason(proc)
        if ping(proc["port"], proc.get("nonce")):
            return "InService", None
        if time.time() - proc["started"] > proc["startup_timeout_s"]:
            stop_server(proc)
            return "Failed", (f"server did not answer /ping within {proc['startup_timeout_s']} s "
                              f"(log {proc['log']})")
        return "Creating", None

    def _advance(self, rec: dict) -> bool:
        """Move one endpoint record along its state machine; True if it changed."""
        status = rec["status"]
        if status == "Creating":
            new, reason = self._probe(rec["process"])
            if new == "Creating":
                return False
            rec["status"], rec["failure_reason"] = new, reason
            return True
        if status == "InService" and not process_alive(rec["process"]):
            rec["status"], rec["failure_reason"] = "Failed", exit_reason(rec["process"])
            return True
        if status == "Updating":
            pending = rec["pending"]
            new, reason = self._probe(pending)
            if new == "Creating":
                if not process_alive(rec["process"]):  # old one died meanwhile
                    rec["failure_reason"] = exit_reason(rec["process"])
                return False
            old = rec["process"]
            rec["pending"] = None
            if new == "InService":
                rec["process"], rec["config_name"] = pending, pending["config_name"]
                rec["status"], rec["failure_reason"] = "InService", None
                stop_server(old)
                log.info("endpoint %s: now on %s; stopped pid %d", rec["name"],
                         rec["config_name"], old["pid"])
            else:  # the new server failed: keep serving from the old one, like a rollback
                rec["status"] = "InService" if process_alive(old) else "Failed"
                rec["failure_reason"] = f"update to {pending['config_name']} failed: {reason}"
            return True
        return False

    def _status(self, rec: dict) -> EndpointStatus:
        proc = rec["process"]
        serving = proc and rec["status"] in ("InService", "Updating", "Creating")
        return EndpointStatus(
            name=rec["name"], status=rec["status"], failure_reason=rec.get("failure_reason"),
            config_name=rec["config_name"],
            pending_config_name=(rec.get("pending") or {}).get("config_name"),
            url=f"http://127.0.0.1:{proc['port']}/invocations" if serving else None,
            tags=rec.get("tags", {}),
            # the serving process started when the endpoint got the config it serves
            since=dt.datetime.fromtimestamp(proc["started"], dt.timezone.utc)
            if proc and proc.get("started") else None,
        )

    @contextlib.contextmanager
    def _recorded_or_stopped(self) -> Iterator[list[dict[str, Any]]]:
        """Servers started inside are stopped again when the registry that records them
        cannot be written (a full disk): no process runs that the registry does not know."""
        started: list[dict[str, Any]] = []
        try:
            yield started
        except BaseException:
            for proc in started:
                stop_server(proc)
            raise

    # ---- endpoints ------------------------------------------------------------------------

    def create_endpoint(self, name: str, config_name: str, tags: dict[str, str]) -> None:
        check_name("endpoint", name)
        with self._recorded_or_stopped() as started, self._registry() as reg:
            old = reg["endpoints"].get(name)
            if old is not None:
                if old["config_name"] == config_name and old["status"] != "Failed":
                    return  # a rerun adopts it
                raise ValueError(f"endpoint {name} exists (status {old['status']}, config "
                                 f"{old['config_name']}): update or delete it")
            proc = self._start_server(reg, name, config_name)
            started.append(proc)
            reg["endpoints"][name] = {
                "name": name, "config_name": config_name, "tags": dict(tags),
                "status": "Creating", "failure_reason": None, "process": proc, "pending": None,
                "created": time.time(),
            }

    def update_endpoint(self, name: str, config_name: str,
                        policy: TrafficPolicy | None = None, *,
                        autoscaled: bool = False) -> None:
        """Blue/green, all at once: the new server starts beside the old one, which keeps
        serving until the new one is healthy (see _advance). Canary and linear steps have no
        meaning for one local process and run as all-at-once. When the new server fails, the
        endpoint stays InService on its old config with failure_reason set (like SageMaker's
        rollback): after wait(), compare config_name."""
        check_name("endpoint", name)
        if policy is not None and policy.type != "ALL_AT_ONCE":
            log.info("local target: %s traffic shifting runs as ALL_AT_ONCE", policy.type)
        with self._recorded_or_stopped() as started, self._registry() as reg:
            rec = reg["endpoints"].get(name)
            if rec is None:
                raise LookupError(f"endpoint {name} does not exist: create it instead of updating")
            self._advance(rec)
            if rec["status"] != "InService":
                raise EndpointBusy(f"endpoint {name} is {rec['status']}: cannot update it now")
            rec["pending"] = self._start_server(reg, name, config_name)
            started.append(rec["pending"])
            rec["status"], rec["failure_reason"] = "Updating", None

    def describe(self, name: str) -> EndpointStatus | None:
        with self._registry() as reg:
            rec = reg["endpoints"].get(name)
            if rec is None:
                return None
            self._advance(rec)
            return self._status(rec)

    def list_endpoints(self) -> list[EndpointStatus]:
        with self._registry() as reg:
            out = []
            for rec in reg["endpoints"].values():
                self._advance(rec)
                out.append(self._status(rec))
            return out

    @functools.cached_property
    def _http(self) -> Any:
        """One connection pool for all invocations (httpx.Client is thread-safe)."""
        import httpx

        return httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0),
                            limits=httpx.Limits(max_connections=1024))

    def _url(self, name: str) -> str:
        # Fast path for the hot loop of a benchmark: a lock-free read (the registry file is
        # replaced atomically) when the endpoint serves and its process lives. With several
        # copies, the one with the fewest of our requests outstanding (SageMaker's
        # LEAST_OUTSTANDING_REQUESTS routing).
        rec = self._read()["endpoints"].get(name)
        procs = self.serving_procs(rec) if rec else []
        if procs:
            port = min((p["port"] for p in procs), key=lambda q: self._outstanding.get(q, 0))
            return f"http://127.0.0.1:{port}/invocations"
        st = self.describe(name)
        if st is None:
            raise LookupError(f"endpoint {name} does not exist")
        if st.status not in ("InService", "Updating") or st.url is None:
            raise EndpointBusy(f"endpoint {name} is {st.status}"
                               + (f": {st.failure_reason}" if st.failure_reason else ""))
        return st.url

    @functools.cached_property
    def _outstanding(self) -> dict[int, int]:
        """Our requests in flight per server port (what routing picks by)."""
        return {}

    @functools.cached_property
    def _outstanding_lock(self) -> Any:
        import threading

        return threading.Lock()

    @contextlib.contextmanager
    def _counted(self, url: str) -> Iterator[None]:
        port = int(url.split(":")[2].split("/")[0])
        with self._outstanding_lock:
            self._outstanding[port] = self._outstanding.get(port, 0) + 1
        try:
            yield
        finally:
            with self._outstanding_lock:
                self._outstanding[port] -= 1

    def invoke(self, name: str, payload: dict, timeout_s: float | None = None) -> bytes:
        url = self._url(name)
        with self._counted(url), _deadline(name, timeout_s):
            resp = self._http.post(url, json=payload, timeout=timeout_s or INVOKE_TIMEOUT_S)
        if resp.status_code != 200:
            raise InvocationError(resp.status_code, resp.content)
        return resp.content

    def invoke_stream(self, name: str, payload: dict, timeout_s: float | None = None
                      ) -> Iterator[bytes]:
        """Whole JSON lines (without the newline); stream defaults to true like SageMaker's
        invoke_endpoint_with_response_stream."""
        url = self._url(name)
        body = {**payload}
        body.setdefault("stream", True)

        def lines() -> Iterator[bytes]:
            with self._counted(url), _deadline(name, timeout_s), self._http.stream(
                    "POST", url, json=body, timeout=timeout_s or INVOKE_TIMEOUT_S) as resp:
                if resp.status_code != 200:
                    raise InvocationError(resp.status_code, resp.read())
                for line in resp.iter_lines():
                    if line.strip():
                        yield line.encode()

        return lines()

    def model_files(self, endpoint: str, dest: Path, names: Sequence[str]) -> ModelFiles | None:
        """The staged directory: its serving.properties names the weights' directory
        (option.model_id), which is readable here as it is."""
        from lmiflow.serving.properties_text import parse_entries

        reg = self._read()
        rec = reg["endpoints"].get(endpoint)
        config = reg["endpoint_configs"].get(rec["config_name"]) if rec else None
        model = reg["models"].get(config["model_name"]) if config else None
        if model is None:
            return None
        staged = Path(model["model_data"])
        props = parse_entries((staged / "serving.properties").read_text())
        return ModelFiles(directory=staged, properties=props)

    # ---- deletion and listing ---------------------------------------------------------------

    def delete_endpoint(self, name: str) -> bool:
        with self._registry() as reg:
            rec = reg["endpoints"].pop(name, None)
        if rec is None:
            return False
        if rec.get("scaler"):
            stop_process(rec["scaler"])
        for proc in (rec.get("pending"), rec.get("process"), *rec.get("copies", [])):
            if proc:
                stop_server(proc)
        return True

    # ---- autoscaling: copies as processes (targets.local_scaler) ----------------------------

    def apply_autoscaling(self, endpoint: str, plan: ScalingPlan) -> list[str]:
        """Record the policy on the endpoint and start its scaler (once: a running scaler
        reads the new policy on its next tick)."""

        with self._registry() as reg:
            rec = reg["endpoints"].get(endpoint)
            if rec is None:
                raise LookupError(f"endpoint {endpoint} does not exist")
            rec["autoscaling"] = plan.model_dump(mode="json")
            scaler = rec.get("scaler")
            if not (scaler and process_alive(scaler)):
                log_path = self._dir("logs") / f"{endpoint}-scaler.log"
                rec["scaler"] = {**start_module(
                    self.python, ["lmiflow.targets.local_scaler", "--state-dir",
                                  str(self.state_dir.resolve()), "--endpoint", endpoint,
                                  "--tick-s", str(self.scaler_tick_s)],
                    log_path, dict(os.environ), self.state_dir), "log": str(log_path)}
        return [f"scaler pid {rec['scaler']['pid']}: {plan.min_instances}..{plan.max_instances}"
                f" copies (server processes), target {plan.target_per_instance:g} concurrent "
                f"requests per copy", f"timeline: {timeline_path(self.state_dir, endpoint)}"]

    def remove_autoscaling(self, endpoint: str) -> bool:
        """Stop the scaler and the copies it added; the endpoint's own process keeps serving."""
        with self._registry() as reg:
            rec = reg["endpoints"].get(endpoint)
            if rec is None or not rec.get("autoscaling"):
                return False
            rec["autoscaling"] = None
            scaler, copies = rec.pop("scaler", None), rec.pop("copies", [])
        if scaler:
            stop_process(scaler)
        for proc in copies:
            stop_server(proc)
        return True

    def serving_procs(self, rec: dict) -> list[dict]:
        """The processes that take requests: the endpoint's own and its InService copies of
        the config it serves (none while it is Creating or Failed)."""
        if rec["status"] not in ("InService", "Updating") or not rec.get("process") \
                or not process_alive(rec["process"]):
            return []
        return [rec["process"], *(c for c in rec.get("copies", [])
                                  if c["status"] == "InService"
                                  and c["config_name"] == rec["config_name"]
                                  and process_alive(c))]

    def scale_copies(self, endpoint: str, want: int, in_flight: dict[int, int | None]
                     ) -> list[str]:
        """One scaler tick's changes: copies that started become InService (or go, when
        they failed), copies of an older config and surplus copies drain (no new requests),
        drained copies with nothing in flight stop, and new copies start up to `want`
        (the endpoint's own process counts as one). Returns what changed, in words."""
        actions: list[str] = []
        stop: list[dict] = []
        with self._recorded_or_stopped() as started, self._registry() as reg:
            rec = reg["endpoints"].get(endpoint)
            if rec is None:
                return actions
            copies = rec.setdefault("copies", [])
            for c in list(copies):
                if c["status"] == "Creating":
                    new, reason = self._probe(c)
                    if new == "InService":
                        c["status"] = "InService"
                        actions.append(f"copy pid {c['pid']} InService")
                    elif new == "Failed":
                        copies.remove(c)
                        actions.append(f"copy pid {c['pid']} failed: {reason}")
                elif c["status"] == "InService" and (
                        c["config_name"] != rec["config_name"] or not process_alive(c)):
                    c["status"], c["draining_since"] = "Draining", time.time()
                    actions.append(f"copy pid {c['pid']} draining (old config or gone)")
            live = [c for c in copies if c["status"] in ("Creating", "InService")]
            for c in sorted(live, key=lambda c: -c["started"])[:max(0, 1 + len(live) - want)]:
                c["status"], c["draining_since"] = "Draining", time.time()
                actions.append(f"scale in: copy pid {c['pid']} draining")
            for _ in range(max(0, want - 1 - len(live))):
                proc = {**self._start_server(reg, endpoint, rec["config_name"]),
                        "status": "Creating"}
                started.append(proc)
                copies.append(proc)
                actions.append(f"scale out: copy pid {proc['pid']} starting")
            for c in list(copies):
                if c["status"] == "Draining" and (
                        not in_flight.get(c["port"]) or not process_alive(c)
                        or time.time() - c["draining_since"] > DRAIN_LIMIT_S):
                    copies.remove(c)
                    stop.append(c)
                    actions.append(f"copy pid {c['pid']} stopped")
        for c in stop:
            stop_server(c)
        return actions

    def delete_endpoint_config(self, name: str) -> bool:
        with self._registry() as reg:
            return reg["endpoint_configs"].pop(name, None) is not None

    def delete_model(self, name: str) -> bool:
        with self._registry() as reg:
            rec = reg["models"].pop(name, None)
            if rec is None:
                return False
            staged = (self.state_dir / "staged").resolve()
            data = Path(rec["model_data"])
            in_use = any(m["model_data"] == rec["model_data"] for m in reg["models"].values())
            if data.parent == staged and not in_use:
                shutil.rmtree(data, ignore_errors=True)
            return True

    def config_model_name(self, config_name: str) -> str | None:
        """The model an endpoint config points at (None when there is no such config)."""
        config = self._read()["endpoint_configs"].get(config_name)
        return config["model_name"] if config else None

    def list_resources(self, prefix: str) -> dict[str, list[str]]:
        reg = self._read()
        return {
            kind: sorted(n for n in reg[kind] if n.startswith(prefix))
            for kind in ("models", "endpoint_configs", "endpoints")
        }
