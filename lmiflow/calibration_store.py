"""The calibration store: predicted-vs-measured benchmark records and the fits made from them.

Where it lives is the target's business (Target.load_calibration / update_calibration): the
local target keeps `calibration.json` in its state directory, SageMaker one object under the
run's S3 prefix, so every run that shares a place shares its records. Deploys read the fits
from there when they plan and append to it after each benchmark. `lmiflow calibrate` and
`lmiflow plan --calibration` read a store file by path (by default the local one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from lmiflow.sizing.calibration import CalibrationRecord, CalibrationStore, refit
from lmiflow.sizing.planner import Calibration
from lmiflow.targets.base import StoreOffline, Target

STORE_NAME = "calibration.json"


class CalibrationStoreError(ValueError):
    pass


def default_store_path() -> Path:
    from lmiflow.targets.local import default_state_dir

    return default_state_dir() / STORE_NAME


def parse_store(data: dict | None, where: str) -> CalibrationStore:
    """The store from its JSON (None: there is none yet, an empty store)."""
    if data is None:
        return CalibrationStore()
    try:
        return CalibrationStore.model_validate(data)
    except ValidationError as exc:
        first = str(exc).splitlines()[0]
        raise CalibrationStoreError(f"{where} is not a calibration store ({first})") from None


def load_store(path: str | Path) -> CalibrationStore:
    """The store at `path`; an absent file is an empty store."""
    p = Path(path)
    if not p.exists():
        return CalibrationStore()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise CalibrationStoreError(f"{p} is not a calibration store ({first})") from None
    return parse_store(data, str(p))


def save_store(path: str | Path, store: CalibrationStore) -> None:
    """Write atomically: readers see the old store or the new one, never half of one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(store.model_dump_json(indent=1), encoding="utf-8")
    os.replace(tmp, p)


def add_records(target: Target, records: list[CalibrationRecord]
                ) -> tuple[CalibrationStore, str | None]:
    """Append records to the target's store and refit, atomically with respect to other runs
    appending. Returns the store as written and where it is (None: the target keeps none)."""
    written: list[CalibrationStore] = []

    def change(data: dict | None) -> dict:
        store = parse_store(data, target.calibration_uri() or "calibration store")
        store = refit(store.model_copy(update={"records": [*store.records, *records]}))
        written[:] = [store]
        return store.model_dump(mode="json")

    where = target.update_calibration(change)
    return (written[0] if written else CalibrationStore()), where


def fitted(store: CalibrationStore) -> Calibration:
    """What the planner takes: (accelerator, engine) -> (factors, records behind them)."""
    return {(f.accelerator, f.engine): (f.efficiency, f.records) for f in store.fits}


def planning_calibration(target: Target, *, offline: bool = False
                         ) -> tuple[Calibration, str | None]:
    """Fits for the planner from the target's store and, when they cannot be read, why.
    Planning then goes on with the uncalibrated defaults: calibration sharpens predictions,
    and a damaged, forbidden or unreachable store must not stop a deploy. offline: a dry
    run, which reads no store a service holds."""
    try:
        data = target.load_calibration(offline=offline)
        return fitted(parse_store(data, target.calibration_uri() or "calibration store")), None
    except StoreOffline as exc:
        return {}, f"calibration not used: {exc}"
    except Exception as exc:
        return {}, f"calibration not used: {str(exc).splitlines()[0][:300]}"
