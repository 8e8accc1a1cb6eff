"""The typed run report: report.json's keys, their order and shape, from one pydantic model."""

from __future__ import annotations

import json

import pytest

from lmiflow.cli import main
from lmiflow.report.model import SCHEMA_VERSION, ReportedModel, RunReport, Versions
from tests.report.schema import validate_report

# report.json's top-level keys in order: DESIGN.md's contract first, then the rest.
KEYS = ["schema_version", "lmiflow_version", "run_id", "started_at", "finished_at", "status",
        "endpoint", "candidate_endpoint", "target", "failed_step", "error", "model", "steps",
        "plan", "serving_properties", "image_uri", "smoke_test", "benchmark", "gate",
        "baseline", "versions", "cleanup", "config", "promotion", "weights", "staging",
        "requests", "iam_policy", "execution_role_policy", "host", "promotion_plan",
        "production", "outcome", "calibration", "component", "autoscaling",
        "autoscaling_applied"]


def _fresh() -> RunReport:
    return RunReport(lmiflow_version="0.1.0", started_at="2026-11-29T19:46:40+00:00",
                     endpoint="prod", target="local",
                     model=ReportedModel(id="org/m", revision=None),
                     versions=Versions(lmiflow="0.1.0", model_revision="main"),
                     config={"name": "prod"})


def test_keys_in_report_json_order_and_failed_until_told_otherwise():
    data = _fresh().to_json_dict()
    assert list(data) == KEYS
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["status"] == "failed"
    assert data["steps"] == []


def test_model_names_only_what_is_known():
    # Before fetch_config the report knows the config's id and revision, nothing more.
    assert _fresh().to_json_dict()["model"] == {"id": "org/m", "revision": None}
    later = ReportedModel(id="org/m", revision=None, model_type="llama", num_layers=2,
                          source="hub:org/m@main", kv_cache_bytes_per_token=4096)
    assert later.model_dump(mode="json") == {
        "id": "org/m", "revision": None, "model_type": "llama", "num_layers": 2,
        "source": "hub:org/m@main", "kv_cache_bytes_per_token": 4096}


def test_unknown_field_is_an_error():
    with pytest.raises(ValueError, match="extra"):
        RunReport.model_validate({**_fresh().to_json_dict(), "statsu": "promoted"})


def test_dry_run_report_round_trips_through_the_model(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["deploy", "configs/llama-3.1-8b-g5-g6.yaml", "--dry-run",
                 "--report-dir", str(out)]) == 0
    written = json.loads((out / "report.json").read_text())
    assert list(written) == KEYS
    assert RunReport.model_validate(written).to_json_dict() == written
    validate_report(written)


def test_shipped_schema_is_the_models():
    from lmiflow.report.model import report_json_schema, schema_text, shipped_schema_text

    assert shipped_schema_text() == schema_text(report_json_schema()), (
        "report.schema.json is stale: python -m lmiflow.report.model regenerates it")


def test_report_schema_command_prints_the_shipped_schema(capsys):
    from lmiflow.report.model import shipped_schema_text

    assert main(["report-schema"]) == 0
    out = capsys.readouterr().out
    assert out == shipped_schema_text()
    assert json.loads(out)["properties"]["schema_version"]["default"] == SCHEMA_VERSION


def test_schema_rejects_what_the_contract_forbids():
    from jsonschema import ValidationError

    good = _fresh().to_json_dict()
    validate_report(good)
    for bad in ({**good, "status": "deployed"}, {**good, "statsu": "failed"},
                {k: v for k, v in good.items() if k != "endpoint"},
                {**good, "steps": [{"name": "gate", "status": "completed", "seconds": "1"}]}):
        with pytest.raises(ValidationError):
            validate_report(bad)
