"""Fixtures for the report tests: the sample reports of sample.py, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmiflow.report.writer import write_report
from tests.report import sample

SAMPLES = {
    "full": sample.full_report,
    "rejected": sample.rejected_report,
    "failed_early": sample.failed_early_report,
    "failed_at_start": sample.failed_at_start_report,
    "planned": sample.planned_report,
}


@pytest.fixture(scope="session")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Every sample report written to disk once (plots take about a second per report)."""
    out = {}
    for name, make in SAMPLES.items():
        out[name] = write_report(make(), tmp_path_factory.mktemp(f"report-{name}"))
    return out
