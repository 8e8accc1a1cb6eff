"""Is the candidate worse than production, or is it noise? Pure.

On a shared machine two identical runs differ by far more than their own percentiles suggest
(c=4 TTFT p50 went 30 → 139 → 326 ms between identical runs of the demo): a point comparison
rejects healthy candidates. So each figure is compared as a worsening factor (candidate /
production for a latency, production / candidate for tokens/s: "50 % worse" is ×1.5 either
way, and no bound goes below zero) with a confidence interval taken from repeated
measurements: the benchmark's repeats (benchmark.repeats) on both sides, on a log scale
(Welch's t). When only one side has repeats, its spread stands for both; when neither has,
the comparison is a single run's and says so. A stated noise floor (regression.noise_floor_pct,
e.g. what production's own repeats spread over) widens the interval further. The candidate
fails a figure only when even the interval's lower end is worse than allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from lmiflow.bench.metrics import LevelResult

# (metric, stat, higher_is_worse, RepeatStats field) compared at each shared level.
REGRESSION_METRICS: tuple[tuple[str, str, bool, str], ...] = (
    ("ttft_ms", "p50", True, "ttft_ms_p50"),
    ("tpot_ms", "p50", True, "tpot_ms_p50"),
    ("output_tokens_per_s", "value", False, "output_tokens_per_s"),
)


@dataclass
class Comparison:
    worsening: float  # point estimate: > 1 is worse
    low: float  # the confidence interval's ends (noise floor included)
    high: float
    method: str
    n_candidate: int
    n_baseline: int


def values(level: LevelResult, metric: str, stat: str, repeat_field: str) -> list[float]:
    """The level's value per repeat (or its one value) of a figure; positive values only."""
    if level.repeats:
        vals = [getattr(r, repeat_field) for r in level.repeats]
    else:
        v = getattr(level, metric)
        vals = [getattr(v, stat) if stat != "value" else v]
    return [float(x) for x in vals if x is not None and x > 0]


def _mean_var(logs: Sequence[float]) -> tuple[float, float | None]:
    n = len(logs)
    mean = sum(logs) / n
    if n < 2:
        return mean, None
    return mean, sum((x - mean) ** 2 for x in logs) / (n - 1)


def compare(
    candidate: Sequence[float], baseline: Sequence[float], higher_is_worse: bool,
    confidence: float = 0.95, noise_floor_pct: float = 0.0, paired: bool = False,
) -> Comparison:
    """Worsening factor of candidate against baseline with a two-sided interval. paired: the
    i-th values of both were measured back to back (bench.loadgen.run_interleaved), so the
    interval comes from the per-pair ratios, free of the drift between pairs."""
    from scipy.stats import t as student_t

    lc, lb = [math.log(x) for x in candidate], [math.log(x) for x in baseline]
    mc, vc = _mean_var(lc)
    mb, vb = _mean_var(lb)
    nc, nb = len(lc), len(lb)
    # the point estimate from the values themselves where there is one each: a candidate
    # exactly at the limit must not fail by a rounding of exp(log(x))
    typical_c = candidate[0] if nc == 1 else math.exp(mc)
    typical_b = baseline[0] if nb == 1 else math.exp(mb)
    point = typical_c / typical_b if higher_is_worse else typical_b / typical_c
    if paired and nc == nb and nc >= 2:
        _, vd = _mean_var([a - b for a, b in zip(lc, lb, strict=True)])
        se2, df = vd / nc, nc - 1  # type: ignore[operator]
        method = f"{nc} paired repeats, same run"
    elif vc is not None and vb is not None:
        se2 = vc / nc + vb / nb
        denom = (vc / nc) ** 2 / (nc - 1) + (vb / nb) ** 2 / (nb - 1)
        df = se2 ** 2 / denom if denom > 0 else nc + nb - 2
        method = f"repeats {nc} vs {nb}, Welch t"
    elif vc is not None or vb is not None:
        var, n = (vc, nc) if vc is not None else (vb, nb)
        se2 = var * (1 / nc + 1 / nb)  # type: ignore[operator]
        df = n - 1
        side = "candidate's" if vc is not None else "production's"
        method = f"repeats {nc} vs {nb}, the {side} spread for both"
    else:
        se2, df = 0.0, 1
        method = "one run each: no interval"
    half = float(student_t.ppf(0.5 + confidence / 2, df)) * math.sqrt(se2) if se2 > 0 else 0.0
    margin = math.log1p(noise_floor_pct / 100)
    if noise_floor_pct:
        method += f", noise floor {noise_floor_pct:g} %"
    return Comparison(point, point * math.exp(-half - margin), point * math.exp(half + margin),
                      method, nc, nb)
