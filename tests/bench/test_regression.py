"""The regression comparison by hand: worsening factors on a log scale, Welch's interval, one
side's spread for both, paired repeats, the noise floor. The t quantiles come from scipy."""

import math
import statistics

import pytest
from scipy.stats import t as student_t

from lmiflow.bench.metrics import LevelResult, RepeatStats
from lmiflow.bench.regression import compare, values


def test_values_are_the_repeats_positive_figures():
    level = LevelResult(concurrency=1, requests=3, repeats=[
        RepeatStats(ttft_ms_p50=0.5), RepeatStats(ttft_ms_p50=0.0), RepeatStats()])
    assert values(level, "ttft_ms", "p50", "ttft_ms_p50") == [0.5]
    single = LevelResult(concurrency=1, requests=3, output_tokens_per_s=0.8)
    assert values(single, "output_tokens_per_s", "value", "output_tokens_per_s") == [0.8]


def test_one_run_each_is_a_point_comparison_widened_only_by_the_noise_floor():
    c = compare([120.0], [100.0], higher_is_worse=True)
    assert (c.worsening, c.low, c.high) == (1.2, 1.2, 1.2)
    assert (c.method, c.n_candidate, c.n_baseline) == ("one run each: no interval", 1, 1)
    tokens = compare([80.0], [100.0], higher_is_worse=False, noise_floor_pct=10)
    assert tokens.worsening == 1.25  # 100 / 80: tokens/s falling is worse
    assert tokens.low == pytest.approx(1.25 / 1.1) and tokens.high == pytest.approx(1.25 * 1.1)
    assert tokens.method == "one run each: no interval, noise floor 10 %"


def logs(xs):
    return [math.log(x) for x in xs]


def test_repeats_on_both_sides_get_welchs_interval():
    cand, base = [110.0, 121.0, 133.1], [100.0, 105.0, 98.0, 101.0]
    lc, lb = logs(cand), logs(base)
    vc, vb = statistics.variance(lc), statistics.variance(lb)
    se2 = vc / 3 + vb / 4
    df = se2 ** 2 / ((vc / 3) ** 2 / 2 + (vb / 4) ** 2 / 3)  # Welch-Satterthwaite
    half = student_t.ppf(0.975, df) * math.sqrt(se2)
    point = math.exp(statistics.mean(lc) - statistics.mean(lb))
    c = compare(cand, base, higher_is_worse=True)
    assert c.worsening == pytest.approx(point)
    assert c.low == pytest.approx(point * math.exp(-half))
    assert c.high == pytest.approx(point * math.exp(half))
    assert (c.method, c.n_candidate, c.n_baseline) == ("repeats 3 vs 4, Welch t", 3, 4)


@pytest.mark.parametrize("candidate_has_repeats", [True, False])
def test_one_sides_spread_stands_for_both(candidate_has_repeats):
    many, one = [100.0, 110.0, 125.0, 90.0], [104.0]
    cand, base = (many, one) if candidate_has_repeats else (one, many)
    var = statistics.variance(logs(many))
    se2 = var * (1 / len(cand) + 1 / len(base))
    half = student_t.ppf(0.95, 3) * math.sqrt(se2)  # 90 %: df = 4 - 1
    c = compare(cand, base, higher_is_worse=True, confidence=0.9)
    assert c.low == pytest.approx(c.worsening * math.exp(-half))
    assert c.high == pytest.approx(c.worsening * math.exp(half))
    side = "candidate's" if candidate_has_repeats else "production's"
    assert c.method == f"repeats {len(cand)} vs {len(base)}, the {side} spread for both"


def test_paired_repeats_take_the_spread_of_the_per_pair_ratios():
    cand, base = [110.0, 99.0, 132.0], [100.0, 90.0, 110.0]
    d = [a - b for a, b in zip(logs(cand), logs(base), strict=True)]
    se2 = statistics.variance(d) / 3
    half = student_t.ppf(0.975, 2) * math.sqrt(se2)
    c = compare(cand, base, higher_is_worse=True, paired=True)
    assert c.low == pytest.approx(c.worsening * math.exp(-half))
    assert c.method == "3 paired repeats, same run"
    two = compare(cand[:2], base[:2], higher_is_worse=True, paired=True)
    assert two.method == "2 paired repeats, same run"
    assert compare(cand, base, higher_is_worse=True).method == "repeats 3 vs 3, Welch t"


def test_a_noise_floor_widens_an_interval_on_both_sides():
    cand, base = [110.0, 121.0], [100.0, 105.0]
    plain = compare(cand, base, higher_is_worse=True)
    wide = compare(cand, base, higher_is_worse=True, noise_floor_pct=5)
    assert wide.low == pytest.approx(plain.low / 1.05)
    assert wide.high == pytest.approx(plain.high * 1.05)
    assert wide.method == "repeats 2 vs 2, Welch t, noise floor 5 %"
