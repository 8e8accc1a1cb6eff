"""`lmiflow calibrate`: refit the latency model's efficiency factors from the benchmark records
in the calibration store, and show them with the prediction error before and after."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmiflow.errors import UserInputError

EPILOG = """\
Every benchmark a deploy runs records, per level, the planner's prediction next to the
measured TTFT and TPOT p50 (with the GPU, tensor-parallel degree, engine, image and dtype).
Per accelerator and engine, the fit minimises the squared log error of those records, pulled
weakly toward the engine's defaults, over: memory efficiency (share of bandwidth a decode step
reaches), compute efficiency (share of the tensor peak), step overhead, request overhead and
all-reduce cost. `lmiflow plan` and deploys then use the fitted factors and mark their
predictions calibrated.
"""

FACTORS = (
    ("memory", "memory efficiency", "{:.2f}"),
    ("compute", "compute efficiency", "{:.2f}"),
    ("step_overhead_ms", "step overhead", "{:.2f} ms"),
    ("request_overhead_ms", "request overhead", "{:.1f} ms"),
    ("allreduce_latency_ms", "all-reduce call", "{:.3f} ms"),
)


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="Refit latency factors from recorded benchmarks.",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--store", default=None,
                       help="Calibration store file (default: calibration.json in the state "
                       "dir).")
    where.add_argument("--config", default=None,
                       help="A deployment config: the store of its target (SageMaker: "
                       "calibration.json under target.s3_uri), as its deploys use it.")
    p.add_argument("--json", action="store_true", help="Print the fits as one JSON object.")
    p.set_defaults(run=run)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} %"


def _refit_target_store(config: str):
    """(where, the refit store) of the config's target, written back through the target so
    that a deploy appending at the same time is not lost (its lock, or S3's conditional put)."""
    from lmiflow.calibration_store import CalibrationStoreError, add_records, parse_store
    from lmiflow.pipeline import target_for
    from lmiflow.spec import load_spec

    target = target_for(load_spec(config))
    where = target.calibration_uri()
    if where is None:
        raise UserInputError("--config", f"{config}: its target keeps no calibration store "
                             "(SageMaker: set target.s3_uri)")
    try:
        store = parse_store(target.load_calibration(), where)
        if store.records:  # an empty store is shown, not created
            store, _ = add_records(target, [])  # appending nothing: a refit
    except CalibrationStoreError as exc:
        raise UserInputError("--config", str(exc)) from None
    return where, store


def run(args) -> int:
    from filelock import FileLock

    from lmiflow.calibration_store import (
        CalibrationStoreError,
        default_store_path,
        load_store,
        save_store,
    )
    from lmiflow.sizing.calibration import prior_for, refit

    if args.config:
        where, store = _refit_target_store(args.config)
    else:
        path = Path(args.store) if args.store else default_store_path()
        where = str(path)
        try:
            store = load_store(path)  # an absent store reads as empty and is not created
            if store.records:
                with FileLock(str(path) + ".lock"):
                    store = refit(load_store(path))
                    save_store(path, store)
        except CalibrationStoreError as exc:
            raise UserInputError("--store", str(exc)) from None
    if args.json:
        json.dump({"store": where, "records": len(store.records),
                   "fits": [f.model_dump(mode="json") for f in store.fits]},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"Calibration store {where}: {len(store.records)} record(s)")
    if not store.records:
        print("No records yet: each benchmark a deploy runs adds its levels (predicted vs "
              "measured TTFT and TPOT p50) here.")
        return 0
    for f in store.fits:
        recs = [r for r in store.records
                if (r.accelerator, r.engine) == (f.accelerator, f.engine)]
        prior = prior_for(recs)
        images = sorted({r.image_version for r in recs if r.image_version})
        print(f"\n{f.accelerator} / {f.engine}: {f.records} record(s) from "
              f"{len({r.run for r in recs})} run(s)"
              + (f", images {', '.join(images)}" if images else ""))
        print(f"  {'factor':<20}{'default':>12}{'fitted':>12}")
        for key, label, fmt in FACTORS:
            print(f"  {label:<20}{fmt.format(getattr(prior, key)):>12}"
                  f"{fmt.format(getattr(f.efficiency, key)):>12}")
        b, a = f.mape_before, f.mape_after
        print(f"  error (MAPE): TTFT {_pct(b['ttft_ms'])} -> {_pct(a['ttft_ms'])}, "
              f"TPOT {_pct(b['tpot_ms'])} -> {_pct(a['tpot_ms'])}")
    skipped = {(r.accelerator, r.engine) for r in store.records} - {
        (f.accelerator, f.engine) for f in store.fits}
    for acc, engine in sorted(skipped):
        print(f"\n{acc} / {engine}: records kept, not fitted (no latency model for {engine})")
    return 0
