"""Fixtures for the report tests: the sample reports of sample.py, written once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmiflow.report.writer import write_report
from tests.report import sample
from tests.session_files import session_dir

SAMPLES = {
    "full": sample.full_report,
    "rejected": sample.rejected_report,
    "failed_early": sample.failed_early_report,
    "failed_at_start": sample.failed_at_start_report,
    "planned": sample.planned_report,
}


@pytest.fixture(scope="session")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Every sample report written to disk once per session, whichever xdist worker asks
    first (plots take about a second per report; tests/session_files.py); read-only."""
    from filelock import FileLock

    root = session_dir(tmp_path_factory) / "report-samples"
    index = root / "paths.json"  # written last: its presence means every report is there
    with FileLock(f"{root}.lock"):
        if not index.is_file():
            out = {name: {kind: str(path) for kind, path in
                          write_report(make(), root / name).items()}
                   for name, make in SAMPLES.items()}
            index.write_text(json.dumps(out))
        paths = json.loads(index.read_text())
    return {name: {kind: Path(p) for kind, p in kinds.items()} for name, kinds in paths.items()}
