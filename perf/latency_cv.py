"""The latency model's honest error: cross-validated by source (leave one source out).

For each source of tests/sizing/published/latency.csv, the engine families' factors are fitted
on every other source's runs and that source's runs are predicted with them, so no number below
was fitted to. Prints the per-source table docs/latency-model.md quotes, the mean absolute
percentage error per metric (issue 22's goals: TTFT <= 25 %, TPOT <= 20 %), the factors fitted
on all sources (what sizing/latency.py's defaults come from) and the error bands the planner's
margin uses (sizing.latency.ERROR_BAND): measured / predicted at the 10th and 90th
percentiles, uncalibrated (cross-validated) and after calibration on 3 runs of a family."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmiflow.sizing.latency import ERROR_BAND  # noqa: E402

from tests.sizing import published_cases as pc  # noqa: E402

METRIC = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "e2e_ms": "E2E"}
GOALS = {"ttft_ms": 25, "tpot_ms": 20}


def _mape(rows: list[dict], metric: str) -> tuple[float | None, int]:
    errs = [abs(r["error_pct"]) for r in rows if r["metric"] == metric]
    return (statistics.mean(errs) if errs else None), len(errs)


def main() -> None:
    started = time.perf_counter()
    runs = pc.runs()
    rows = pc.cross_validated(runs)
    print("Cross-validated by source (each source's runs predicted with factors fitted on the "
          "others):")
    print()
    print("| source held out | runs | TTFT MAPE | TPOT MAPE | E2E MAPE |")
    print("|---|---:|---:|---:|---:|")
    for source in sorted({r["held_out"] for r in rows}):
        mine = [r for r in rows if r["held_out"] == source]
        cells = []
        for metric in METRIC:
            v, n = _mape(mine, metric)
            cells.append("-" if v is None else f"{v:.0f} % (n={n})")
        print(f"| {source} | {len({id(r['run']) for r in mine})} | " + " | ".join(cells) + " |")
    print()
    print(f"{len(runs)} runs from {len({s for r in runs for s in r.sources})} sources, "
          f"{len(rows)} numbers; uncalibrated, cross-validated by source:")
    for metric, goal in GOALS.items():
        v, n = _mape(rows, metric)
        print(f"  {METRIC[metric]}: {v:.1f} % MAPE over {n} numbers (goal <= {goal} %)")
    full = {e: pc.fit_family(runs, e) for e in sorted({r.inputs.engine for r in runs})}
    print("Factors fitted on every source (the defaults' source):")
    for engine, eff in full.items():
        print(f"  {engine}: " + ", ".join(f"{k} {getattr(eff, k):.3g}" for k in pc.CV_FACTORS))
    cal = pc.calibrated_rows(runs)
    print("Error bands, measured / predicted at p10 .. p90 (sizing.latency.ERROR_BAND):")
    for metric in GOALS:
        lo, hi = pc.error_band(rows, metric)
        clo, chi = pc.error_band(cal, metric) if any(
            r["metric"] == metric for r in cal) else (float("nan"),) * 2
        used = ERROR_BAND[metric]
        print(f"  {METRIC[metric]}: uncalibrated {lo:.2f} .. {hi:.2f}, calibrated "
              f"{clo:.2f} .. {chi:.2f} (in use: {used['uncalibrated'][0]:.2f} .. "
              f"{used['uncalibrated'][1]:.2f}, {used['calibrated'][0]:.2f} .. "
              f"{used['calibrated'][1]:.2f})")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
