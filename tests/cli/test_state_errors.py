"""Faults of the machine rather than the config, each one line and exit 2 before anything is
created: an unwritable report directory, state directory or Prefect home, a corrupt local
registry; and a deploy summary that reads NaN gates (written as null) without a TypeError."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from lmiflow.cli import main
from lmiflow.commands.deploy import _summary
from lmiflow.spec import parse_spec
from tests.cli.test_bad_input import GOOD, TINY


@pytest.fixture()
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({**GOOD, "model": {"id": str(model)}}))
    return cfg


def _one_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_unwritable_report_dir(config, tmp_path, capsys):
    assert main(["deploy", str(config), "--report-dir", "/dev/null/x"]) == 2
    assert _one_line(capsys).startswith("lmiflow: error: --report-dir: /dev/null/x cannot be "
                                        "created: /dev/null is not a directory")
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "prefect" / "prefect.db").exists()


def test_unwritable_state_dir(config, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(tmp_path / "file" / "state"))
    assert main(["deploy", str(config), "--report-dir", str(tmp_path / "r")]) == 2
    assert _one_line(capsys).startswith("lmiflow: error: LMIFLOW_STATE_DIR: ")
    assert not (tmp_path / "r").exists()
    assert not (tmp_path / "prefect" / "prefect.db").exists()


def test_unwritable_prefect_home(config, tmp_path):
    # a process of its own: Prefect reads PREFECT_HOME once, when it is first imported
    (tmp_path / "file").write_text("")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "file" / "prefect")}
    r = subprocess.run([sys.executable, "-m", "lmiflow", "deploy", str(config), "--report-dir",
                        str(tmp_path / "r")], env=env, capture_output=True, text=True,
                       timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("lmiflow: error: PREFECT_HOME: "), r.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "state").exists()


@pytest.mark.parametrize("command", [["endpoints", "list"], ["deploy", "CONFIG"]])
def test_corrupt_registry(config, tmp_path, capsys, command):
    state = tmp_path / "state"
    state.mkdir()
    (state / "registry.json").write_text('{"endpoints": {"prod": {"name": "pr')
    argv = [str(config) if a == "CONFIG" else a for a in command]
    assert main(argv) == 2
    line = _one_line(capsys)
    assert line.startswith("lmiflow: error: LMIFLOW_STATE_DIR: ")
    assert f"{state / 'registry.json'} is corrupt" in line and "mv " in line
    assert not (tmp_path / "reports").exists()


def test_summary_reads_gates_written_as_null(tmp_path):
    """A level where every request failed measures NaN; report.json writes it as null, and the
    summary reads that report back instead of calling it unreadable."""
    from lmiflow.report.writer import write_report
    from tests.report.sample import rejected_report

    spec = parse_spec(GOOD)
    report = rejected_report()
    check = report.gate.checks[0]
    report.gate.checks[0] = check.model_copy(update={"observed": float("nan"),
                                                     "passed": False})
    report.benchmark.levels[0].ttft_ms.p95 = float("nan")
    paths = write_report(report, tmp_path)
    assert json.loads(paths["json"].read_text())["gate"]["checks"][0]["observed"] is None
    console = Console(file=open(tmp_path / "out.txt", "w"), width=80)  # noqa: SIM115
    _summary(paths["json"], spec, console)
    console.file.close()
    out = (tmp_path / "out.txt").read_text()
    assert "no readable report" not in out
    assert "REJECTED" in out.upper()
    _summary(Path(tmp_path / "missing.json"), spec, Console(file=open(tmp_path / "o2", "w")))  # noqa: SIM115
    assert "no readable report" in (tmp_path / "o2").read_text()


def test_a_failed_production_is_exit_2_before_anything_is_created(config, tmp_path, capsys):
    state = tmp_path / "state"
    state.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    proc = {"pid": dead.pid, "port": 9, "log": str(tmp_path / "none.log"),
            "config_name": "bad-input-test-ec-00000000", "started": 0.0,
            "startup_timeout_s": 60}
    registry = {"models": {}, "endpoint_configs": {}, "endpoints": {"bad-input-test": {
        "name": "bad-input-test", "config_name": "bad-input-test-ec-00000000", "tags": {},
        "status": "InService", "failure_reason": None, "process": proc, "pending": None,
        "created": 0.0}}}
    (state / "registry.json").write_text(json.dumps(registry))
    assert main(["deploy", str(config), "--report-dir", str(tmp_path / "r")]) == 2
    line = _one_line(capsys)
    assert line.startswith("lmiflow: error: promotion.replace_failed: production endpoint "
                           "bad-input-test is Failed (server process")
    assert "--replace-failed" in line
    assert not (tmp_path / "r").exists()
    after = json.loads((state / "registry.json").read_text())
    assert list(after["endpoints"]) == ["bad-input-test"] and after["models"] == {}
