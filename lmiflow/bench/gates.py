"""The verdict: SLO gates and a regression limit against production's baseline. Pure.

Every check carries what it compared (observed, threshold, margin) so a rejection explains
itself in the report; anything that cannot be measured fails, with a note saying why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from lmiflow.bench.gate_spec import LATENCY_METRICS, GateSpec
from lmiflow.bench.metrics import BenchResult, LevelResult, compare
from lmiflow.bench.regression import REGRESSION_METRICS, values
from lmiflow.bench.regression import compare as compare_runs


class Check(BaseModel):
    metric: str
    stat: str
    op: str
    threshold: float
    observed: float | None
    passed: bool
    margin: float | None = Field(
        default=None, description="Headroom in the metric's unit: positive passes, negative fails."
    )
    concurrency: int | None = None
    rate_rps: float | None = Field(default=None, description="Open-loop level's arrival rate.")
    kind: Literal["slo", "regression"] = "slo"
    baseline: float | None = Field(default=None, description="Regression: production's value.")
    worsening: float | None = Field(
        default=None, description="Regression: candidate vs production as a factor (> 1 worse)."
    )
    worsening_low: float | None = Field(default=None, description="Its interval's lower end.")
    worsening_high: float | None = Field(default=None, description="Its interval's upper end.")
    method: str | None = Field(default=None, description="Regression: how it was compared.")
    note: str | None = None


class Verdict(BaseModel):
    passed: bool
    checks: list[Check] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


def observed_value(level: LevelResult, metric: str, stat: str) -> float | None:
    """A level's value of a metric at a statistic (GateSpec has checked both names)."""
    value = getattr(level, metric)
    return getattr(value, stat) if metric in LATENCY_METRICS else value


def _margin(observed: float, op: str, threshold: float) -> float:
    return threshold - observed if op in ("<", "<=") else observed - threshold


def _check(
    metric: str, stat: str, op: str, threshold: float, level: LevelResult | None,
    concurrency: int | None, kind: Literal["slo", "regression"] = "slo",
    baseline: float | None = None,
) -> Check:
    if level is None:
        return Check(
            metric=metric, stat=stat, op=op, threshold=threshold, observed=None, passed=False,
            concurrency=concurrency, kind=kind, baseline=baseline,
            note=f"no benchmark level at concurrency {concurrency}",
        )
    observed = observed_value(level, metric, stat)
    if observed is None:
        why = "no samples (every request failed?)"
        if metric == "goodput":
            why = level.goodput_note or "goodput was not computed"
        elif metric == "usd_per_1m_output_tokens":
            why = "no price given (usd_per_hour) or no output tokens"
        return Check(
            metric=metric, stat=stat, op=op, threshold=threshold, observed=None, passed=False,
            concurrency=level.concurrency, kind=kind, baseline=baseline, note=why,
        )
    note = None
    if metric in LATENCY_METRICS:
        stats = getattr(level, metric)
        if stat in stats.few_samples:
            note = f"{stat} from only {stats.n} samples: too few to mean much"
    return Check(
        metric=metric, stat=stat, op=op, threshold=threshold, observed=observed,
        passed=compare(observed, op, threshold), margin=_margin(observed, op, threshold),
        concurrency=level.concurrency, rate_rps=level.rate_rps, kind=kind, baseline=baseline,
        note=note,
    )


def _slo_checks(gates: Sequence[GateSpec], result: BenchResult) -> list[Check]:
    checks: list[Check] = []
    for g in gates:
        if g.concurrency is not None:
            checks.append(_check(g.metric, g.stat, g.op, g.threshold,
                                 result.level(g.concurrency), g.concurrency))
        elif not result.levels:
            checks.append(_check(g.metric, g.stat, g.op, g.threshold, None, None))
            checks[-1].note = "the benchmark has no levels"
        else:
            checks.extend(_check(g.metric, g.stat, g.op, g.threshold, lv, lv.concurrency)
                          for lv in result.levels)
    return checks


def _regression_checks(
    result: BenchResult, baseline: BenchResult, pct: float, confidence: float,
    noise_floor_pct: float,
) -> tuple[list[Check], list[str]]:
    checks: list[Check] = []
    notes: list[str] = []
    shared = [lv for lv in result.levels
              if lv.rate_rps is None and baseline.level(lv.concurrency) is not None]
    if not shared:
        checks.append(Check(
            metric="output_tokens_per_s", stat="value", op=">=", threshold=0.0, observed=None,
            passed=False, kind="regression",
            note="no concurrency level in common with the baseline: cannot compare",
        ))
        return checks, notes
    allowed = 1 + pct / 100
    paired = baseline.settings.source in result.settings.interleaved_with
    if paired:
        notes.append(f"production ({baseline.settings.source}) was measured in the same run, "
                     "level by level: repeats are compared in pairs")
    for lv in shared:
        base_lv = baseline.level(lv.concurrency)
        assert base_lv is not None
        for metric, stat, higher_is_worse, field in REGRESSION_METRICS:
            base_vals = values(base_lv, metric, stat, field)
            if not base_vals:
                notes.append(f"baseline has no {metric} {stat} at concurrency "
                             f"{lv.concurrency}: not compared")
                continue
            base = _geomean(base_vals)
            op = "<=" if higher_is_worse else ">="
            threshold = base * allowed if higher_is_worse else base / allowed
            cand_vals = values(lv, metric, stat, field)
            if not cand_vals:
                checks.append(_check(metric, stat, op, threshold, lv, lv.concurrency,
                                     kind="regression", baseline=base))
                continue
            c = compare_runs(cand_vals, base_vals, higher_is_worse, confidence,
                             noise_floor_pct, paired=paired)
            observed = _geomean(cand_vals)
            best = base * c.low if higher_is_worse else base / c.low
            passed = c.low <= allowed
            verdict = "within noise of" if c.low <= 1 <= c.high else (
                "better than" if c.high < 1 else "worse than")
            checks.append(Check(
                metric=metric, stat=stat, op=op, threshold=threshold, observed=observed,
                passed=passed, margin=_margin(best, op, threshold), concurrency=lv.concurrency,
                kind="regression", baseline=base, worsening=c.worsening, worsening_low=c.low,
                worsening_high=c.high, method=c.method,
                note=(f"{_pct(c.worsening)} ({confidence:.0%} interval {_pct(c.low)} to "
                      f"{_pct(c.high)}; {c.method}): {verdict} production"
                      + ("" if passed else f", beyond the allowed {pct:g} %")),
            ))
    return checks, notes


def _geomean(vals: list[float]) -> float:
    """The typical value of repeats whose spread is multiplicative (one value: itself)."""
    return vals[0] if len(vals) == 1 else math.exp(sum(map(math.log, vals)) / len(vals))


def _pct(factor: float) -> str:
    return f"{(factor - 1) * 100:+.0f} %"


def evaluate(
    gates: Sequence[GateSpec],
    result: BenchResult,
    baseline: BenchResult | None = None,
    max_regression_pct: float | None = None,
    *,
    confidence: float = 0.95,
    noise_floor_pct: float = 0.0,
) -> Verdict:
    """Gate `result`. A gate with `concurrency` checks that level only, else every level.
    With a baseline and `max_regression_pct`, the candidate must not be confidently worse
    than the baseline by more than that percent at any shared closed-loop level (p50 TTFT,
    p50 TPOT, output tokens/s: bench.regression). No gates and no baseline: passes, with a
    note."""
    for name, value, lo, hi in (("max_regression_pct", max_regression_pct, 0, 1000),
                                ("confidence", confidence, 0.5, 0.999),
                                ("noise_floor_pct", noise_floor_pct, 0, 1000)):
        if value is not None and not (lo <= value <= hi):  # NaN fails too
            raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    checks = _slo_checks(gates, result)
    notes: list[str] = []
    if max_regression_pct is not None:
        if baseline is None:
            notes.append("no production baseline: regression not checked (first deploy?)")
        else:
            reg, reg_notes = _regression_checks(result, baseline, max_regression_pct,
                                                confidence, noise_floor_pct)
            checks.extend(reg)
            notes.extend(reg_notes)
    if not checks:
        notes.append("no gates configured: nothing to check")
    return Verdict(passed=all(c.passed for c in checks), checks=checks, notes=notes)
