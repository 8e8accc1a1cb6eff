"""The calibration store: one JSON file of predicted-vs-measured records and the fits made from
them (default: `calibration.json` in the state directory, beside the local target's registry).

Every run on this machine reads and appends to that file. SageMaker runs are meant to keep
their store under the run's S3 prefix; that belongs behind the target interface (being
reshaped now), so until it lands they use this file too and the load/save pair below is the
seam to move.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from lmiflow.sizing.calibration import CalibrationRecord, CalibrationStore, refit
from lmiflow.sizing.planner import Calibration

STORE_NAME = "calibration.json"


class CalibrationStoreError(ValueError):
    pass


def default_store_path() -> Path:
    from lmiflow.targets.local import default_state_dir

    return default_state_dir() / STORE_NAME


def load_store(path: str | Path) -> CalibrationStore:
    """The store at `path`; an absent file is an empty store."""
    p = Path(path)
    if not p.exists():
        return CalibrationStore()
    try:
        return CalibrationStore.model_validate(json.loads(p.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise CalibrationStoreError(f"{p} is not a calibration store ({first})") from None


def save_store(path: str | Path, store: CalibrationStore) -> None:
    """Write atomically: readers see the old store or the new one, never half of one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(store.model_dump_json(indent=1), encoding="utf-8")
    os.replace(tmp, p)


def add_records(path: str | Path, records: list[CalibrationRecord]) -> CalibrationStore:
    """Append records and refit, under a lock (concurrent runs append to one store)."""
    from filelock import FileLock  # deferred: `lmiflow plan` only reads the store

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(p) + ".lock"):
        store = load_store(p)
        store = refit(store.model_copy(update={"records": [*store.records, *records]}))
        save_store(p, store)
    return store


def fitted(store: CalibrationStore) -> Calibration:
    """What the planner takes: (accelerator, engine) -> (factors, records behind them)."""
    return {(f.accelerator, f.engine): (f.efficiency, f.records) for f in store.fits}


def planning_calibration(path: str | Path | None = None) -> tuple[Calibration, str | None]:
    """Fits for the planner and, when the store cannot be read, why (planning goes on with the
    uncalibrated defaults: a damaged store must not stop a deploy)."""
    try:
        return fitted(load_store(path or default_store_path())), None
    except CalibrationStoreError as exc:
        return {}, f"calibration not used: {exc}"
