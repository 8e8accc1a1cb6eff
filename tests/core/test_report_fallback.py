"""A report that cannot be written where asked goes to a fallback directory (one per run), and
only when every place refuses does writing fail, with every reason named."""

from __future__ import annotations

import json

import pytest

from lmiflow.run_record import (
    ReportNotWritten,
    RunRecord,
    fallback_report_dirs,
    write_report_somewhere,
)
from lmiflow.spec import parse_spec

SPEC = parse_spec({"name": "fb", "model": {"id": "org/model"},
                   "workload": {"max_input_tokens": 8, "max_output_tokens": 8,
                                "concurrency": 1}})


def _report(run_id="run-1"):
    return RunRecord(SPEC, run_id).finish("promoted")


def test_an_unwritable_report_dir_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "file").write_text("")
    path, why = write_report_somewhere(_report(), tmp_path / "file" / "report")
    assert path == fallback_report_dirs("fb", "run-1")[0] / "report.json"
    assert path.is_relative_to(tmp_path / "state")
    assert json.loads(path.read_text())["status"] == "promoted"
    assert why.startswith(str(tmp_path / "file" / "report"))


def test_the_asked_dir_when_it_works(tmp_path):
    path, why = write_report_somewhere(_report(), tmp_path / "r")
    assert path == tmp_path / "r" / "report.json" and why is None


def test_nowhere_to_write_names_every_place(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr("lmiflow.run_record.fallback_report_dirs",
                        lambda name, run_id: [tmp_path / "file" / "a", tmp_path / "file" / "b"])
    with pytest.raises(ReportNotWritten) as exc:
        write_report_somewhere(_report(), tmp_path / "file" / "r")
    assert str(exc.value).count(str(tmp_path / "file")) == 3
