"""The latency model's honest error: cross-validated by source (leave one source out).

For each source of tests/sizing/published/latency.csv, the engine families' factors are fitted
on every other source's runs and that source's runs are predicted with them, so no number below
was fitted to. Prints the per-source table docs/latency-model.md quotes, the mean absolute
percentage error per metric (issue 22's goals: TTFT <= 25 %, TPOT <= 20 %), the factors fitted
on all sources (what sizing/latency.py's defaults come from) and the error bands the planner's
margin uses (sizing.latency.ERROR_BAND): measured / predicted at the 10th and 90th
percentiles, uncalibrated (cross-validated) and after calibration on 3 runs of a family.
`--rows` adds every number, worst first."""

from __future__ import annotations

import math
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


def _factor(name: str, value: float) -> float:
    """A fitted factor as sizing.latency.FITTED holds it: 2 significant digits."""
    return float(f"{value:.2g}")


def main() -> None:
    started = time.perf_counter()
    runs = pc.runs()
    out = pc.summary(runs)
    rows = out["rows"]
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
    for metric in METRIC:
        v, n = _mape(rows, metric)
        goal = f" (goal <= {GOALS[metric]} %)" if metric in GOALS else ""
        print(f"  {METRIC[metric]}: {v:.1f} % MAPE over {n} numbers{goal}")
    print("Factors fitted on every source (sizing.latency.FITTED, 2 significant digits):")
    for engine, eff in out["fitted"].items():
        print(f"  {engine}: " + ", ".join(f"{k} {_factor(k, getattr(eff, k)):g}"
                                          for k in pc.CV_FACTORS))
    print("Error bands, measured / predicted at p10 .. p90 (sizing.latency.ERROR_BAND):")
    for metric, bands in out["bands"].items():
        n_cal = sum(r["metric"] == metric for r in out["calibrated_rows"])
        n_cv = sum(r["metric"] == metric for r in rows)
        print(f"  {METRIC[metric]}: uncalibrated {bands['uncalibrated']} (n={n_cv}), "
              f"calibrated {bands['calibrated']} (n={n_cal}); in use: "
              f"{ERROR_BAND[metric]['uncalibrated']}, {ERROR_BAND[metric]['calibrated']}")
    if "--rows" in sys.argv:
        print("Every number, worst first (measured / predicted):")
        for r in sorted(rows, key=lambda r: -abs(math.log(r["measured"] / r["predicted"]))):
            run, i = r["run"], r["run"].inputs
            print(f"  {r['held_out'][:18]:18} {run.model[:13]:13} {run.accelerator[7:16]:9} "
                  f"{run.engine[:6]:6} tp{i.tp} {i.input_tokens}/{i.output_tokens} "
                  f"{run.load} c{i.concurrency} {METRIC[r['metric']]}: {r['measured']:.1f} "
                  f"vs {r['predicted']:.1f} ms ({r['measured'] / r['predicted']:.2f})")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
