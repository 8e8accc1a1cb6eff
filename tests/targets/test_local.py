"""Local target: registry rules, and real endpoints (server processes) through their lifecycle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import Timeout

from lmiflow.targets import make_target
from lmiflow.targets.base import EndpointBusy, EndpointVariant, Target
from lmiflow.targets.local import InvocationError, LocalTarget
from lmiflow.targets.processes import (
    failure_from_log,
    free_port,
    port_in_use,
    process_alive,
    start_ticks,
    stop_server,
)

VARIANT = EndpointVariant(instance_type="local")


@pytest.fixture()
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalTarget:
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(tmp_path / "state"))
    t = make_target("local")
    assert isinstance(t, LocalTarget)
    yield t
    for name in t.list_resources("")["endpoints"]:  # never leave a server behind
        t.delete_endpoint(name)


# ---- registry, no processes -------------------------------------------------------------------


def test_make_target_and_protocol(target: LocalTarget, tmp_path: Path) -> None:
    assert isinstance(target, Target)
    assert target.state_dir == tmp_path / "state"  # from LMIFLOW_STATE_DIR
    with pytest.raises(ValueError, match="target kind"):
        make_target("azure")


def test_models_configs_resources_and_deletes(target: LocalTarget) -> None:
    d = target.stage("m-1", {"serving.properties": "option.max_model_len=64\n",
                             "sub/extra.txt": "x"})
    assert (Path(d) / "sub" / "extra.txt").read_text() == "x"
    target.create_model("m-1", d, None, {"OPTION_DTYPE": "fp32"}, {"team": "a"})
    target.create_model("m-1", d, None, {"OPTION_DTYPE": "fp32"}, {"team": "a"})  # rerun adopts
    with pytest.raises(ValueError, match="other data"):
        target.create_model("m-1", d, None, {"OPTION_DTYPE": "bf16"}, {})
    target.create_endpoint_config("c-1", "m-1", VARIANT, {"team": "a"})
    with pytest.raises(LookupError):
        target.create_endpoint_config("c-2", "no-model", VARIANT, {})
    assert target.list_resources("m-") == {"models": ["m-1"], "endpoint_configs": [],
                                           "endpoints": []}
    assert target.list_resources("") == {"models": ["m-1"], "endpoint_configs": ["c-1"],
                                         "endpoints": []}
    reg = json.loads((target.state_dir / "registry.json").read_text())
    assert reg["models"]["m-1"]["tags"] == {"team": "a"}
    assert (target.state_dir / "registry.json").stat().st_mode & 0o077 == 0  # env: owner only
    assert target.delete_endpoint_config("c-1") is True
    assert target.delete_endpoint_config("c-1") is False
    assert target.delete_model("m-1") is True
    assert not Path(d).exists()  # staged files go with their model
    assert target.delete_model("m-1") is False
    assert target.delete_endpoint("nothing") is False
    assert target.describe("nothing") is None
    with pytest.raises(LookupError):
        target.wait("nothing", 1)


@pytest.mark.parametrize("files, match", [
    ({"x.txt": "1"}, "serving.properties"),
    ({"serving.properties": "", "../escape": "1"}, "file name"),
    ({"serving.properties": "", "/abs": "1"}, "file name"),
])
def test_stage_rejects_missing_properties_and_escaping_paths(
    target: LocalTarget, files: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        target.stage("m", files)


def test_names_must_be_sagemaker_names(target: LocalTarget) -> None:
    with pytest.raises(ValueError, match="does not match"):
        target.stage("../evil", {"serving.properties": ""})
    with pytest.raises(ValueError, match="does not match"):
        target.create_endpoint("bad_name", "c", {})


def test_endpoint_lock_is_exclusive_across_holders(target: LocalTarget) -> None:
    with target.endpoint_lock("ep"):
        other = LocalTarget(target.state_dir).endpoint_lock("ep", timeout=0.1)
        with pytest.raises(Timeout), other:
            pass
        with LocalTarget(target.state_dir).endpoint_lock("other-ep", timeout=0.1):
            pass  # a different endpoint is not blocked


def test_concurrent_writers_lose_nothing(target: LocalTarget) -> None:
    code = ("import sys; from pathlib import Path; from lmiflow.targets.local import LocalTarget\n"
            "t = LocalTarget(Path(sys.argv[1]))\n"
            "for i in range(15):\n"
            "    n = f'{sys.argv[2]}-{i}'\n"
            "    t.create_model(n, t.stage(n, {'serving.properties': ''}), None, {}, {})\n")
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target.state_dir), p], cwd=root)
             for p in ("a", "b", "c")]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    assert len(target.list_resources("")["models"]) == 45


def test_failure_reason_prefers_the_servers_own_line(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("Traceback ...\nlmiflow-server FAILED: cannot load model x: boom\nbye\n")
    assert failure_from_log(log) == "cannot load model x: boom"
    log.write_text("line one\nKilled\n")
    assert failure_from_log(log) == "line one | Killed"
    assert failure_from_log(tmp_path / "missing.log") is None


# ---- which processes are ours ----------------------------------------------------------------


@pytest.fixture()
def impostor() -> subprocess.Popen:
    """Another project's process whose command line names our server module."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             "-m", "lmiflow.serving.server"], start_new_session=True)
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while cmdline.exists() and b"serving.server" not in cmdline.read_bytes() \
            and time.monotonic() < deadline:
        time.sleep(0.01)  # the kernel fills it in as the new image starts
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_process_is_ours_only_with_its_recorded_start_time(impostor: subprocess.Popen) -> None:
    assert b"lmiflow.serving.server" in Path(f"/proc/{impostor.pid}/cmdline").read_bytes()
    ticks = start_ticks(impostor.pid)
    assert isinstance(ticks, int)
    assert process_alive({"pid": impostor.pid, "start_ticks": ticks})
    # The same pid recycled: a record from a process that started at another time.
    recycled = {"pid": impostor.pid, "start_ticks": ticks - 1, "port": free_port()}
    assert not process_alive(recycled)
    assert not process_alive({"pid": impostor.pid})  # a record without an identity
    stop_server(recycled, grace_s=0.1)
    assert impostor.poll() is None  # never signalled
    impostor.kill()
    impostor.wait()
    assert not process_alive({"pid": impostor.pid, "start_ticks": ticks})


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_an_endpoint_whose_pid_was_recycled_is_failed_and_not_killed(
    target: LocalTarget, impostor: subprocess.Popen
) -> None:
    target.create_model("m", target.stage("m", {"serving.properties": ""}), None, {}, {})
    target.create_endpoint_config("c", "m", VARIANT, {})
    log = target.state_dir / "ep-1.log"
    log.write_text("")
    with target._registry() as reg:  # what a server that died long ago left behind
        reg["endpoints"]["ep"] = {
            "name": "ep", "config_name": "c", "tags": {}, "status": "InService",
            "failure_reason": None, "pending": None, "created": 0.0,
            "process": {"pid": impostor.pid, "start_ticks": start_ticks(impostor.pid) + 1,
                        "port": free_port(), "log": str(log), "config_name": "c",
                        "started": 0.0, "startup_timeout_s": 900},
        }
    st = target.describe("ep")
    assert st.status == "Failed" and st.url is None
    assert f"server process {impostor.pid} exited" in st.failure_reason
    assert target.delete_endpoint("ep") is True
    assert impostor.poll() is None  # the other project's process lives on


# ---- real servers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from tests.session_files import session_demo_model

    return session_demo_model(tmp_path_factory)


def _deploy(t: LocalTarget, name: str, props: str, env: dict[str, str] | None = None) -> str:
    t.create_model(name, t.stage(name, {"serving.properties": props}), None, env or {}, {})
    t.create_endpoint_config(name, name, VARIANT, {})
    return name


def _record(t: LocalTarget, endpoint: str) -> dict:
    return json.loads((t.state_dir / "registry.json").read_text())["endpoints"][endpoint]


def _gone(proc: dict) -> bool:
    return not process_alive(proc) and not port_in_use(proc["port"])


@pytest.mark.slow
def test_endpoint_lifecycle_with_blue_green_update(target: LocalTarget, weights: Path) -> None:
    props = f"option.model_id={weights}\noption.max_rolling_batch_size=4\n"
    blue = _deploy(target, "blue", props + "option.max_model_len=256\n")
    green = _deploy(target, "green", props + "option.max_model_len=384\n")

    seen: list[str] = []
    target.create_endpoint("ep", blue, {"owner": "tests"})
    target.create_endpoint("ep", blue, {"owner": "tests"})  # a rerun adopts it
    st = target.wait("ep", 120, on_status=lambda s, _t: seen.append(s.status))
    assert seen == ["Creating", "InService"]
    assert st.status == "InService" and st.config_name == blue and st.tags == {"owner": "tests"}
    assert st.url is not None and st.url.startswith("http://127.0.0.1:")
    assert st.url.endswith("/invocations")

    out = json.loads(target.invoke("ep", {"inputs": "hi", "parameters": {"max_new_tokens": 4,
                                                                          "details": True}}))
    assert out["details"]["generated_tokens"] == 4
    lines = list(target.invoke_stream("ep", {"inputs": "hi",
                                             "parameters": {"max_new_tokens": 5}}))
    assert len(lines) == 5 and all(not x.endswith(b"\n") for x in lines)
    assert "generated_text" in json.loads(lines[-1])
    with pytest.raises(InvocationError) as err:
        target.invoke("ep", {"inputs": "hi", "parameters": {"nope": 1}})
    assert err.value.status_code == 400

    # The server survives its creator: it runs in its own session, not as our child's group.
    old = _record(target, "ep")["process"]
    assert old["start_ticks"] == start_ticks(old["pid"])  # its identity, in the registry
    assert os.getpgid(old["pid"]) == old["pid"]
    assert os.getsid(old["pid"]) != os.getsid(0)

    target.update_endpoint("ep", green)
    during = target.describe("ep")
    assert during.status == "Updating" and during.config_name == blue
    # Blue keeps serving while green starts.
    assert json.loads(target.invoke("ep", {"inputs": "a", "parameters": {"max_new_tokens": 1}}))
    with pytest.raises(EndpointBusy):
        target.update_endpoint("ep", blue)
    st = target.wait("ep", 120)
    assert st.status == "InService" and st.config_name == green and st.failure_reason is None
    new = _record(target, "ep")["process"]
    assert new["pid"] != old["pid"] and st.url == f"http://127.0.0.1:{new['port']}/invocations"
    assert _gone(old)  # blue stopped, its port free
    big = {"inputs": "word " * 100, "parameters": {"max_new_tokens": 1}}  # ~300 tokens
    assert target.invoke("ep", big)  # fits green's max_model_len (384), not blue's (256)

    # An update whose server cannot start leaves the endpoint on the old config.
    broken = _deploy(target, "broken", f"option.model_id={weights}\noption.dtype=fp64\n")
    target.update_endpoint("ep", broken)
    st = target.wait("ep", 120)
    assert st.status == "InService" and st.config_name == green
    assert st.failure_reason is not None and "option.dtype" in st.failure_reason
    assert target.invoke("ep", {"inputs": "still up", "parameters": {"max_new_tokens": 1}})

    assert target.delete_endpoint("ep") is True
    assert _gone(new)
    assert target.describe("ep") is None
    assert target.delete_endpoint("ep") is False
    assert target.list_resources("")["endpoints"] == []


@pytest.mark.slow
def test_endpoint_outlives_the_process_that_created_it(target: LocalTarget,
                                                       weights: Path) -> None:
    name = _deploy(target, "orphan", f"option.model_id={weights}\noption.max_model_len=128\n")
    code = ("import sys; from pathlib import Path; from lmiflow.targets.local import LocalTarget; "
            f"LocalTarget(Path(sys.argv[1])).create_endpoint('orphan-ep', '{name}', {{}})")
    res = subprocess.run([sys.executable, "-c", code, str(target.state_dir)],
                         cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert res.returncode == 0  # the creating "CLI" is gone now
    st = target.wait("orphan-ep", 120)  # another process drives it to InService
    assert st.status == "InService"
    assert target.invoke("orphan-ep", {"inputs": "x", "parameters": {"max_new_tokens": 1}})
    assert target.delete_endpoint("orphan-ep")


@pytest.mark.slow
def test_bad_model_id_fails_with_the_reason(target: LocalTarget) -> None:
    name = _deploy(target, "hub", "option.model_id=no-such-org/no-such-model\n",
                   env={"HF_HUB_OFFLINE": "1"})  # never reach the Hub from tests
    target.create_endpoint("bad", name, {})
    st = target.wait("bad", 120)
    assert st.status == "Failed"
    assert "server process" in st.failure_reason and "exited" in st.failure_reason
    assert "no-such-org/no-such-model" in st.failure_reason
    assert st.url is None
    with pytest.raises(EndpointBusy):
        target.invoke("bad", {"inputs": "x"})
    with pytest.raises(ValueError, match="exists"):
        target.create_endpoint("bad", "other", {})
    assert target.delete_endpoint("bad") is True


@pytest.mark.slow
def test_server_killed_by_hand_shows_failed_in_list(target: LocalTarget, weights: Path) -> None:
    name = _deploy(target, "k", f"option.model_id={weights}\noption.max_model_len=128\n")
    target.create_endpoint("victim", name, {})
    assert target.wait("victim", 120).status == "InService"
    proc = _record(target, "victim")["process"]
    os.killpg(proc["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_alive(proc) and time.monotonic() < deadline:
        time.sleep(0.05)
    [st] = LocalTarget(target.state_dir).list_endpoints()  # a fresh CLI would see the same
    assert st.status == "Failed"
    assert f"server process {proc['pid']} exited" in st.failure_reason
    assert target.delete_endpoint("victim") is True
    assert not port_in_use(proc["port"])


@pytest.mark.slow
def test_cli_list_invoke_delete(target: LocalTarget, weights: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    from lmiflow.cli import main

    name = _deploy(target, "cli", f"option.model_id={weights}\noption.max_model_len=128\n")
    target.create_endpoint("cli-ep", name, {})
    assert target.wait("cli-ep", 120).status == "InService"

    assert main(["endpoints", "list", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["name"] == "cli-ep" and row["status"] == "InService"

    assert main(["endpoints", "invoke", "cli-ep", "Hello", "--max-new-tokens", "3"]) == 0
    text = capsys.readouterr().out
    assert text.strip()
    assert main(["endpoints", "invoke", "cli-ep", "Hello", "--max-new-tokens", "3",
                 "--stream"]) == 0
    assert capsys.readouterr().out == text  # greedy: the stream spells the same text

    assert main(["endpoints", "invoke", "missing", "Hello"]) == 2
    assert "missing" in capsys.readouterr().err
    proc = _record(target, "cli-ep")["process"]
    assert main(["endpoints", "delete", "cli-ep", "--with-config-and-model"]) == 0
    assert not process_alive(proc)
    assert target.list_resources("cli") == {"models": [], "endpoint_configs": [],
                                            "endpoints": []}
    assert main(["endpoints", "delete", "cli-ep"]) == 2


def test_planning_writes_nothing(tmp_path: Path) -> None:
    t = LocalTarget(tmp_path / "state")
    assert len(t.instance_catalog()) == 1  # this machine
    assert t.image_uri("vllm", "0.33.0", None) is None
    assert t.serving_engine("trtllm") == "local"  # its own server, whatever the config says
    assert t.serving_model_id("org/m", None) == "org/m"
    assert t.serving_model_id("m", str(tmp_path / "m")) == str((tmp_path / "m").resolve())
    v = t.endpoint_variant("local", 1, 10**12)
    assert v.volume_size_gb is None and v.container_startup_health_check_timeout_s is None
    assert t.load_baseline("prod") is None
    assert t.list_resources("") == {"models": [], "endpoint_configs": [], "endpoints": []}
    assert not (tmp_path / "state").exists()  # a dry run leaves no trace


def test_baseline_is_kept_per_endpoint(target: LocalTarget) -> None:
    where = target.save_baseline("prod", {"levels": [{"concurrency": 1}]})
    assert Path(where) == target.state_dir / "baselines" / "prod.json"
    assert target.load_baseline("prod") == {"levels": [{"concurrency": 1}]}
    assert target.load_baseline("prod-2") is None
    with pytest.raises(ValueError, match="endpoint name"):
        target.save_baseline("../escape", {})


@pytest.mark.slow
def test_a_process_that_took_the_port_first_is_not_taken_for_the_server(
        target: LocalTarget, weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between free_port() and the server's bind, another process takes the port and answers
    /ping 200 (and every invocation) while our server still loads: it is not our server (no
    nonce), so the endpoint never turns InService on its answers, and fails when our server
    cannot bind."""
    import http.server
    import threading

    class Squatter(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = b'{"status": "Healthy", "generated_text": "squatted"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    squatter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Squatter)
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    try:
        import lmiflow.targets.local as local

        monkeypatch.setattr(local, "free_port", lambda: squatter.server_address[1])
        name = _deploy(target, "squat", f"option.model_id={weights}\n")
        target.create_endpoint("squat", name, {})
        st = target.wait("squat", 120)
    finally:
        squatter.shutdown()
        squatter.server_close()
    assert st.status == "Failed", st
    assert "squatted" not in (st.failure_reason or "")


@pytest.mark.slow
def test_cli_delete_waits_for_the_endpoints_lock_and_removes_what_only_it_used(
        target: LocalTarget, weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A deploy holds the endpoint's lock for its whole run: delete waits for it (else the
    deploy would create production again with its regression checks skipped), then removes
    the endpoint, its config, its model and the model's staged files."""
    from lmiflow.cli import main

    name = _deploy(target, "lk", f"option.model_id={weights}\noption.max_model_len=128\n")
    staged = Path(json.loads((target.state_dir / "registry.json").read_text())[
        "models"]["lk"]["model_data"])
    target.create_endpoint("lk-ep", name, {})
    assert target.wait("lk-ep", 120).status == "InService"
    lock = target.state_dir / "locks" / "lk-ep.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; "
         f"lock = FileLock({str(lock)!r}); lock.acquire(); print('held', flush=True); "
         "time.sleep(3)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"  # a deploy of lk-ep is running
    t0 = time.monotonic()
    assert main(["endpoints", "delete", "lk-ep"]) == 0
    waited = time.monotonic() - t0
    holder.wait(10)
    assert waited > 1.5, waited  # not before the holder let go
    out = capsys.readouterr().out
    assert "deleted endpoint lk-ep" in out and "deleted model lk" in out
    assert target.list_resources("") == {"models": [], "endpoint_configs": [], "endpoints": []}
    assert staged.parent.name == "staged" and not staged.exists()
