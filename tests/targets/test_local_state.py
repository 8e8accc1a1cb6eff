"""The local target's state read defensively and written atomically: a corrupt registry or
baseline, or a state directory that cannot be written, is a StateError naming the path and
a recovery command that works, never a traceback."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest

from lmiflow.errors import StateError
from lmiflow.targets.local import LocalTarget


@pytest.mark.parametrize(("text", "why"), [
    ('{"models": {"a": {"model_data": "x"', "truncated"),
    ("\x00\x00\x00", "invalid JSON"),
    ('{"endpoints": []}', "not a registry"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_a_corrupt_registry_names_its_path_and_a_recovery(tmp_path, text, why):
    t = LocalTarget(tmp_path)
    (tmp_path / "registry.json").write_text(text)
    with pytest.raises(StateError) as exc:
        t.list_endpoints()
    msg = str(exc.value)
    assert exc.value.field == "LMIFLOW_STATE_DIR" and "\n" not in msg
    assert str(tmp_path / "registry.json") in msg and why in msg
    assert f"mv {tmp_path / 'registry.json'}" in msg


def test_the_suggested_recovery_restores_the_previous_version(tmp_path):
    t = LocalTarget(tmp_path)
    with t._registry() as reg:
        reg["models"]["first"] = {"model_data": "x", "env": {}}
    with t._registry() as reg:
        reg["models"]["second"] = {"model_data": "y", "env": {}}
    reg_file = tmp_path / "registry.json"
    reg_file.write_text(reg_file.read_text()[:20])  # truncated by a crash elsewhere
    with pytest.raises(StateError) as exc:
        t.list_resources("")
    command = re.search(r"`(cp [^`]+)`", str(exc.value)).group(1)
    subprocess.run(shlex.split(command), check=True)
    assert t.list_resources("")["models"] == ["first"]  # one change behind, readable


def test_registry_and_staged_files_are_private(tmp_path):
    t = LocalTarget(tmp_path)
    with t._registry() as reg:
        reg["models"]["m"] = {"model_data": "x", "env": {}}
    assert (tmp_path / "registry.json").stat().st_mode & 0o777 == 0o600
    assert json.loads((tmp_path / "registry.json").read_text())["models"]["m"]["env"] == {}


def test_a_state_dir_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    t = LocalTarget(blocker / "state")
    with pytest.raises(StateError, match="not a directory") as exc:
        t.check_state()
    assert exc.value.field == "LMIFLOW_STATE_DIR" and str(blocker) in str(exc.value)
    with pytest.raises(StateError, match="cannot create"):
        t.stage("m", {"serving.properties": "engine=Python\n"})


def test_check_state_creates_nothing(tmp_path):
    LocalTarget(tmp_path / "new" / "state").check_state()
    assert not (tmp_path / "new").exists()


def test_a_corrupt_baseline(tmp_path):
    t = LocalTarget(tmp_path)
    t.save_baseline("prod", {"levels": []})
    assert t.load_baseline("prod") == {"levels": []}
    (tmp_path / "baselines" / "prod.json").write_text('{"levels": [')
    with pytest.raises(StateError, match=r"rm .*prod\.json"):
        t.load_baseline("prod")


def test_the_calibration_store_is_a_file_in_the_state_dir(tmp_path):
    t = LocalTarget(tmp_path)
    assert t.load_calibration() is None and t.load_calibration(offline=True) is None
    seen = []

    def append(data):
        seen.append(data)
        return {"records": [*(data or {}).get("records", []), len(seen)]}

    assert t.update_calibration(append) == str(tmp_path / "calibration.json")
    t.update_calibration(append)
    assert seen == [None, {"records": [1]}]
    assert json.loads((tmp_path / "calibration.json").read_text()) == {"records": [1, 2]}
    (tmp_path / "calibration.json").write_text('{"records": [')
    with pytest.raises(StateError, match=r"calibration\.json is corrupt .*mv "):
        t.update_calibration(append)  # never overwrites what it cannot read
    assert (tmp_path / "calibration.json").read_text() == '{"records": ['


def test_a_server_the_registry_cannot_record_is_stopped(tmp_path, monkeypatch):
    from lmiflow.targets.base import EndpointVariant
    from lmiflow.targets.local import RegistryFile
    from lmiflow.targets.processes import process_alive

    t = LocalTarget(tmp_path)
    t.create_model("m", t.stage("m", {"serving.properties": "engine=Python\n"}), None, {}, {})
    t.create_endpoint_config("c", "m", EndpointVariant(instance_type="local"), {})
    started = []
    real_start = LocalTarget._start_server

    def start(self, *a):
        started.append(real_start(self, *a))
        return started[-1]

    def full_disk(self, data):
        raise StateError("LMIFLOW_STATE_DIR", "cannot write registry.json: No space left")

    monkeypatch.setattr(LocalTarget, "_start_server", start)
    monkeypatch.setattr(RegistryFile, "write", full_disk)
    with pytest.raises(StateError, match="No space left"):
        t.create_endpoint("e", "c", {})
    assert started and not process_alive(started[0])
