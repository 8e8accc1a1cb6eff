"""Gates, table-driven: SLO checks per level and the regression limit against a baseline."""

from __future__ import annotations

import pytest

from lmiflow.bench.gate_spec import GateSpec
from lmiflow.bench.gates import Check, evaluate
from lmiflow.bench.metrics import BenchResult, LatencyStats, LevelResult


def stats(p50: float, p95: float, p99: float, n: int = 200) -> LatencyStats:
    return LatencyStats(mean=p50, p50=p50, p90=p95, p95=p95, p99=p99, n=n,
                        few_samples=["p99"] if n < 100 else [])


def level(conc: int, ttft=(100, 150, 200), tpot=(20, 25, 30), tps=1000.0, err=0.0,
          n=200, **kw) -> LevelResult:
    return LevelResult(
        concurrency=conc, requests=n, errors=int(err * n), error_rate=err,
        ttft_ms=stats(*ttft, n=n), tpot_ms=stats(*tpot, n=n), itl_ms=stats(*tpot, n=n),
        e2e_ms=stats(2000, 2500, 3000, n=n), output_tokens_per_s=tps,
        requests_per_min=60.0, **kw,
    )


RESULT = BenchResult(levels=[
    level(1),
    level(8, ttft=(120, 180, 260), tps=4000.0, err=0.05, n=50, goodput=3.0,
          usd_per_1m_output_tokens=1.5),
])


def g(metric, threshold, op="<=", stat=None, conc=None) -> GateSpec:
    latency = metric.endswith("_ms")
    return GateSpec(metric=metric, stat=stat or ("p95" if latency else "value"), op=op,
                    threshold=threshold, concurrency=conc)


# (gates, passed, [(concurrency, passed, observed, margin)], note substring or None)
SLO_CASES = [
    pytest.param([g("ttft_ms", 200)], True, [(1, True, 150, 50), (8, True, 180, 20)], None,
                 id="every-level-pass"),
    pytest.param([g("ttft_ms", 150, conc=8)], False, [(8, False, 180, -30)], None,
                 id="one-level-fail"),
    pytest.param([g("ttft_ms", 150, op="<")], False, [(1, False, 150, 0), (8, False, 180, -30)],
                 None, id="strict-op-at-equality-fails"),
    pytest.param([g("ttft_ms", 150, op="<=", conc=1)], True, [(1, True, 150, 0)], None,
                 id="inclusive-op-at-equality-passes"),
    pytest.param([g("error_rate", 0.01)], False, [(1, True, 0.0, 0.01), (8, False, 0.05, -0.04)],
                 None, id="error-rate"),
    pytest.param([g("output_tokens_per_s", 2000, op=">=")], False,
                 [(1, False, 1000, -1000), (8, True, 4000, 2000)], None, id="throughput-floor"),
    pytest.param([g("ttft_ms", 500, stat="p99", conc=8)], True, [(8, True, 260, 240)],
                 "too few", id="few-samples-noted"),
    pytest.param([g("ttft_ms", 500, conc=4)], False, [(4, False, None, None)],
                 "no benchmark level", id="missing-level-fails"),
    pytest.param([g("usd_per_1m_output_tokens", 2.0, conc=1)], False, [(1, False, None, None)],
                 "price", id="no-price-fails"),
    pytest.param([g("goodput", 1.0, op=">=", conc=1)], False, [(1, False, None, None)],
                 "goodput", id="goodput-not-computed-fails"),
    pytest.param([g("goodput", 1.0, op=">=", conc=8)], True, [(8, True, 3.0, 2.0)], None,
                 id="goodput-pass"),
]


@pytest.mark.parametrize(("gates", "passed", "expected", "note"), SLO_CASES)
def test_slo_gates(gates, passed, expected, note):
    v = evaluate(gates, RESULT)
    assert v.passed is passed
    got = [(c.concurrency, c.passed, c.observed, c.margin) for c in v.checks]
    assert [x[:2] for x in got] == [x[:2] for x in expected]
    for (_, _, obs, margin), (_, _, exp_obs, exp_margin) in zip(got, expected, strict=True):
        assert obs == pytest.approx(exp_obs) if exp_obs is not None else obs is None
        assert margin == pytest.approx(exp_margin) if exp_margin is not None else margin is None
    assert all(c.kind == "slo" for c in v.checks)
    if note:
        assert any(note in (c.note or "") for c in v.checks)


def test_none_observed_latency_fails_with_note():
    res = BenchResult(levels=[LevelResult(concurrency=1, requests=5, errors=5, error_rate=1.0)])
    v = evaluate([g("ttft_ms", 1000)], res)
    assert not v.passed and v.checks[0].observed is None and "no samples" in v.checks[0].note


def test_no_levels_fails_each_gate():
    v = evaluate([g("ttft_ms", 1000)], BenchResult())
    assert not v.passed and "no levels" in v.checks[0].note


def test_no_gates_no_baseline_passes_with_note():
    v = evaluate([], RESULT)
    assert v.passed and v.checks == [] and v.notes


def scaled(ttft=1.0, tpot=1.0, tps=1.0) -> BenchResult:
    """RESULT with p50 TTFT, p50 TPOT and tokens/s multiplied."""
    levels = []
    for lv in RESULT.levels:
        lv = lv.model_copy(deep=True)
        lv.ttft_ms.p50 *= ttft
        lv.tpot_ms.p50 *= tpot
        lv.output_tokens_per_s *= tps
        levels.append(lv)
    return BenchResult(levels=levels)


REGRESSION_CASES = [
    pytest.param(scaled(), True, None, id="same-as-baseline"),
    pytest.param(scaled(ttft=1.09), True, None, id="ttft-9pct-worse-within-10"),
    pytest.param(scaled(ttft=1.11), False, "ttft_ms", id="ttft-11pct-worse"),
    pytest.param(scaled(tpot=1.2), False, "tpot_ms", id="tpot-20pct-worse"),
    pytest.param(scaled(tps=0.85), False, "output_tokens_per_s", id="throughput-15pct-lower"),
    pytest.param(scaled(ttft=0.5, tps=2.0), True, None, id="better-passes"),
]


@pytest.mark.parametrize(("candidate", "passed", "failing_metric"), REGRESSION_CASES)
def test_regression_against_baseline(candidate, passed, failing_metric):
    v = evaluate([], candidate, baseline=RESULT, max_regression_pct=10)
    assert v.passed is passed
    assert len(v.checks) == 6 and all(c.kind == "regression" for c in v.checks)
    failed = {c.metric for c in v.checks if not c.passed}
    assert failed == ({failing_metric} if failing_metric else set())
    ttft1 = next(c for c in v.checks if c.metric == "ttft_ms" and c.concurrency == 1)
    assert ttft1.baseline == 100 and ttft1.threshold == pytest.approx(110)
    assert ttft1.stat == "p50" and ttft1.op == "<="


def test_regression_only_at_shared_levels():
    base = BenchResult(levels=[level(1), level(32)])
    v = evaluate([], RESULT, baseline=base, max_regression_pct=5)
    assert {c.concurrency for c in v.checks} == {1}


def test_regression_without_shared_levels_fails():
    base = BenchResult(levels=[level(32)])
    v = evaluate([], RESULT, baseline=base, max_regression_pct=5)
    assert not v.passed and "in common" in v.checks[0].note


def test_regression_skipped_without_baseline_or_limit():
    v = evaluate([], scaled(ttft=3), baseline=None, max_regression_pct=10)
    assert v.passed and any("baseline" in n for n in v.notes)
    v = evaluate([], scaled(ttft=3), baseline=RESULT, max_regression_pct=None)
    assert v.passed and v.checks == []


def test_slo_and_regression_combine():
    v = evaluate([g("error_rate", 0.1)], scaled(ttft=1.5), baseline=RESULT,
                 max_regression_pct=10)
    kinds = {(c.kind, c.passed) for c in v.checks}
    assert ("slo", True) in kinds and ("regression", False) in kinds and not v.passed


def with_repeats(lv: LevelResult, ttfts, tps=None) -> LevelResult:
    """lv with one RepeatStats per TTFT p50 (TPOT as lv's, tokens/s as given or lv's)."""
    from lmiflow.bench.metrics import RepeatStats

    tps = tps or [lv.output_tokens_per_s] * len(ttfts)
    return lv.model_copy(update={"repeats": [
        RepeatStats(requests=10, ttft_ms_p50=t, tpot_ms_p50=lv.tpot_ms.p50, output_tokens_per_s=x)
        for t, x in zip(ttfts, tps, strict=True)]})


def test_noisy_repeats_do_not_reject_a_healthy_candidate():
    # The demo's case: TTFT p50 of identical runs on a shared machine spread 30 -> 326 ms.
    base = BenchResult(levels=[with_repeats(level(4), [30, 139, 326])])
    cand = BenchResult(levels=[with_repeats(level(4), [150, 200, 250])])
    v = evaluate([], cand, baseline=base, max_regression_pct=50)
    ttft = next(c for c in v.checks if c.metric == "ttft_ms")
    assert ttft.worsening > 1.5  # the point estimate alone would reject it...
    assert ttft.worsening_low < 1.5 < ttft.worsening_high and ttft.passed  # ...noise cannot
    assert "within noise" in ttft.note and "Welch" in ttft.method
    assert v.passed


def test_a_consistent_regression_is_rejected_despite_repeats():
    base = BenchResult(levels=[with_repeats(level(4), [100, 104, 98])])
    cand = BenchResult(levels=[with_repeats(level(4), [200, 208, 196])])
    v = evaluate([], cand, baseline=base, max_regression_pct=50)
    ttft = next(c for c in v.checks if c.metric == "ttft_ms")
    assert not ttft.passed and ttft.worsening == pytest.approx(2.0, rel=0.01)
    assert ttft.worsening_low > 1.5 and "beyond the allowed 50 %" in ttft.note
    assert ttft.margin < 0 and not v.passed


def test_one_sided_repeats_lend_their_spread_and_a_noise_floor_widens():
    base = BenchResult(levels=[with_repeats(level(4), [90, 100, 110])])
    cand = BenchResult(levels=[level(4, ttft=(125, 150, 200))])  # one run, 25 % slower
    v = evaluate([], cand, baseline=base, max_regression_pct=10)
    ttft = next(c for c in v.checks if c.metric == "ttft_ms")
    assert "production's spread" in ttft.method and ttft.passed
    one_run = BenchResult(levels=[level(4)])
    strict = evaluate([], cand, baseline=one_run, max_regression_pct=10)
    assert not next(c for c in strict.checks if c.metric == "ttft_ms").passed
    floor = evaluate([], cand, baseline=one_run, max_regression_pct=10, noise_floor_pct=20)
    c = next(c for c in floor.checks if c.metric == "ttft_ms")
    assert c.passed and "noise floor 20 %" in c.method  # 1.25 / 1.2 = 1.04 <= 1.1


def test_a_loose_limit_keeps_the_throughput_bound_above_zero_and_able_to_fail():
    # max_regression_pct 300: tokens/s may fall to production / 4, never below zero.
    v = evaluate([], scaled(tps=0.3), baseline=RESULT, max_regression_pct=300)
    tps = [c for c in v.checks if c.metric == "output_tokens_per_s"]
    assert [c.threshold for c in tps] == pytest.approx([250.0, 1000.0])
    assert all(c.passed for c in tps)
    v = evaluate([], scaled(tps=0.2), baseline=RESULT, max_regression_pct=300)
    assert not any(c.passed for c in v.checks if c.metric == "output_tokens_per_s")


@pytest.mark.parametrize(("kw", "name"), [
    ({"max_regression_pct": float("nan")}, "max_regression_pct"),
    ({"max_regression_pct": -1}, "max_regression_pct"),
    ({"max_regression_pct": 10, "confidence": 1.0}, "confidence"),
    ({"max_regression_pct": 10, "noise_floor_pct": float("inf")}, "noise_floor_pct"),
])
def test_meaningless_bounds_are_refused(kw, name):
    with pytest.raises(ValueError, match=name):
        evaluate([], RESULT, baseline=RESULT, **kw)


def test_repeats_measured_in_pairs_cancel_the_drift_between_pairs():
    # The machine got slower over the run; candidate and production drifted together.
    from lmiflow.bench.metrics import BenchSettings

    base = BenchResult(levels=[with_repeats(level(4), [50, 150, 400])],
                       settings=BenchSettings(source="local:prod"))
    cand = BenchResult(levels=[with_repeats(level(4), [90, 280, 700])],
                       settings=BenchSettings(source="local:cand",
                                              interleaved_with=["local:prod"]))
    v = evaluate([], cand, baseline=base, max_regression_pct=50)
    ttft = next(c for c in v.checks if c.metric == "ttft_ms")
    assert "paired" in ttft.method and not ttft.passed  # consistently ~1.8x: a regression
    unpaired = cand.model_copy(update={"settings": BenchSettings(source="local:cand")})
    v = evaluate([], unpaired, baseline=base, max_regression_pct=50)
    assert next(c for c in v.checks if c.metric == "ttft_ms").passed  # lost in the drift


def test_throughput_exactly_at_the_regression_limit_passes():
    """The limit is inclusive: 50 % worse than a 300 tok/s baseline is 300 / 1.5 = 200 tok/s,
    and a candidate at exactly 200 passes (>=); one a hair below fails. Same for latency at
    exactly +50 %."""
    base = BenchResult(levels=[level(1, ttft=(100, 150, 200), tpot=(20, 25, 30), tps=300.0)])
    at_limit = BenchResult(levels=[level(1, ttft=(150, 150, 200), tpot=(30, 25, 30),
                                         tps=200.0)])
    v = evaluate([], at_limit, baseline=base, max_regression_pct=50)
    by_metric = {c.metric: c for c in v.checks}
    tps = by_metric["output_tokens_per_s"]
    assert (tps.op, tps.threshold, tps.observed, tps.baseline) == (">=", 200.0, 200.0, 300.0)
    assert tps.passed and tps.margin == pytest.approx(0, abs=1e-9)
    assert by_metric["ttft_ms"].threshold == 150.0 and by_metric["ttft_ms"].passed
    assert by_metric["tpot_ms"].threshold == 30.0 and by_metric["tpot_ms"].passed
    assert v.passed
    below = BenchResult(levels=[level(1, tps=199.99)])
    v = evaluate([], below, baseline=base, max_regression_pct=50)
    tps = next(c for c in v.checks if c.metric == "output_tokens_per_s")
    assert not tps.passed and tps.margin == pytest.approx(-0.01)
    assert not v.passed


# ---- every field of a check, for the cases that cannot be measured ----------------------------

def test_unmeasurable_checks_fail_and_say_why():
    no_samples = level(1).model_copy(update={"ttft_ms": LatencyStats(n=0)})
    priced_none = level(2)
    goodput_unset = level(3, goodput_note="goodput needs latency gates (...)")
    result = BenchResult(levels=[no_samples, priced_none, goodput_unset, level(4)])
    v = evaluate([g("ttft_ms", 200, conc=1), g("usd_per_1m_output_tokens", 2.0, conc=2),
                  g("goodput", 1.0, op=">=", conc=3), g("goodput", 1.0, op=">=", conc=4),
                  g("ttft_ms", 200, conc=5)], result)
    common = dict(observed=None, passed=False, margin=None, kind="slo", baseline=None)
    assert v.checks == [
        Check(metric="ttft_ms", stat="p95", op="<=", threshold=200, concurrency=1,
              note="no samples (every request failed?)", **common),
        Check(metric="usd_per_1m_output_tokens", stat="value", op="<=", threshold=2.0,
              concurrency=2, note="no price given (usd_per_hour) or no output tokens",
              **common),
        Check(metric="goodput", stat="value", op=">=", threshold=1.0, concurrency=3,
              note="goodput needs latency gates (...)", **common),
        Check(metric="goodput", stat="value", op=">=", threshold=1.0, concurrency=4,
              note="goodput was not computed", **common),
        Check(metric="ttft_ms", stat="p95", op="<=", threshold=200, concurrency=5,
              note="no benchmark level at concurrency 5", **common),
    ]
    assert not v.passed and v.notes == []


def test_a_passing_check_has_no_note():
    v = evaluate([g("ttft_ms", 200, conc=1)], RESULT)
    assert v.checks == [Check(metric="ttft_ms", stat="p95", op="<=", threshold=200,
                              observed=150, passed=True, margin=50, concurrency=1)]
    assert v.passed and v.notes == []


def test_no_levels_and_no_gates_notes():
    v = evaluate([g("error_rate", 0.1)], BenchResult(levels=[]))
    assert v.checks == [Check(metric="error_rate", stat="value", op="<=", threshold=0.1,
                              observed=None, passed=False, note="the benchmark has no levels")]
    v = evaluate([], RESULT)
    assert v.passed and v.checks == [] and v.notes == ["no gates configured: nothing to check"]
    v = evaluate([], RESULT, baseline=None, max_regression_pct=10)
    assert v.notes == ["no production baseline: regression not checked (first deploy?)",
                       "no gates configured: nothing to check"]


def test_regression_without_a_shared_level_is_one_failed_check():
    v = evaluate([], RESULT, baseline=BenchResult(levels=[level(32)]), max_regression_pct=5)
    assert v.checks == [Check(
        metric="output_tokens_per_s", stat="value", op=">=", threshold=0.0, observed=None,
        passed=False, kind="regression",
        note="no concurrency level in common with the baseline: cannot compare")]


def test_regression_skips_metrics_the_baseline_lacks_and_checks_the_rest():
    base_lv = level(1).model_copy(update={"ttft_ms": LatencyStats(n=0)})
    cand_lv = level(1).model_copy(update={"tpot_ms": LatencyStats(n=0)})
    v = evaluate([], BenchResult(levels=[cand_lv]), baseline=BenchResult(levels=[base_lv]),
                 max_regression_pct=10)
    assert v.notes == ["baseline has no ttft_ms p50 at concurrency 1: not compared"]
    assert [(c.metric, c.passed) for c in v.checks] == [("tpot_ms", False),
                                                        ("output_tokens_per_s", True)]
    tpot = v.checks[0]
    assert (tpot.kind, tpot.baseline, tpot.observed, tpot.concurrency) == (
        "regression", 20, None, 1)
    assert tpot.note == "no samples (every request failed?)"
