"""Latency model vs published measurements: every row of tests/sizing/published/latency.csv
with its uncalibrated prediction, the mean absolute percentage error per accelerator and
metric, and the error after calibrating on three runs of a family. Prints the Markdown table
docs/latency-model.md shows. Goals (issue 14): uncalibrated TPOT <= 25 %, TTFT <= 35 % across
A100, H100 and L40S; calibrated <= 12 %."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.sizing import published_cases as pc  # noqa: E402

METRIC = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "e2e_ms": "E2E"}


def main() -> None:
    runs = pc.runs()
    rows = pc.comparisons(runs)
    print("| source | model | GPU | engine | tp | dtype | in/out | conc. | metric | measured "
          "| predicted | error |")
    print("|---|---|---|---|---|---|---|---|---|---:|---:|---:|")
    for r in rows:
        run, inp = r["run"], r["run"].inputs
        print(f"| {', '.join(sorted(run.sources))} | {run.model} | "
              f"{run.accelerator.removeprefix('NVIDIA ')} | {run.engine} | {inp.tp} | "
              f"{run.dtype} | {inp.input_tokens}/{inp.output_tokens} | "
              f"{inp.concurrency} | {METRIC[r['metric']]} | {r['measured']:.1f} ms | "
              f"{r['predicted']:.1f} ms | {r['error_pct']:+.0f} % |")
    print()
    print("Uncalibrated mean absolute percentage error (A100, H100, L40S):")
    for metric, goal in (("ttft_ms", 35), ("tpot_ms", 25)):
        mape, n = pc.uncalibrated_mape(rows, metric)
        print(f"  {METRIC[metric]}: {mape:.1f} % over {n} measurements (goal <= {goal} %, "
              f"ratio {mape / goal:.2f})")
    for acc in sorted({r["run"].accelerator for r in rows}):
        parts = []
        for metric in METRIC:
            errs = [abs(r["error_pct"]) for r in rows
                    if r["run"].accelerator == acc and r["metric"] == metric]
            if errs:
                parts.append(f"{METRIC[metric]} {statistics.mean(errs):.0f} % (n={len(errs)})")
        print(f"  {acc}: {', '.join(parts)}")
    cal = pc.calibrated_mape(runs)
    print("Calibrated on 3 runs of one family (model x GPU x engine), every choice of 3:")
    for name, label in (("in_sample", "on the 3 fitted runs"),
                        ("held_out", "on the family's other runs")):
        print(f"  {label}: " + ", ".join(
            f"{METRIC[m]} {v:.1f} % (goal <= 12 %, ratio {v / 12:.2f})"
            for m, v in sorted(cal[name].items())))


if __name__ == "__main__":
    main()
