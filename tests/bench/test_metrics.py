"""Metrics on hand-built records whose answers are worked out by hand."""

from __future__ import annotations

import pytest

from lmiflow.bench.gate_spec import GateSpec
from lmiflow.bench.metrics import (
    BenchResult,
    GeneratorStats,
    LatencyStats,
    RequestRecord,
    compute_level,
    e2e_s,
    itl_s,
    latency_stats,
    meets_slos,
    open_loop_saturation,
    saturation_rate,
    saturation_reason,
    tpot_s,
    ttft_s,
)


def rec(start, times, *, first=None, end=None, reported=None, **kw) -> RequestRecord:
    """A successful record with one token per time; first/end default to the first/last."""
    return RequestRecord(
        start=start, token_times=times, first_token=times[0] if first is None else first,
        end=times[-1] if end is None else end, output_tokens=kw.pop("tokens", len(times)),
        generated_tokens_reported=reported, **kw,
    )


# A: 4 tokens, TTFT 100 ms, then 20 ms apart -> E2E 160, TPOT (160-100)/3 = 20.
A = rec(0.0, [0.10, 0.12, 0.14, 0.16], reported=4)
# B: one token at 50 ms -> TTFT 50, E2E 50, no TPOT, no ITL.
B = rec(1.0, [1.05], reported=2)  # server says 2: one mismatch
# C: an error; D: a timeout (ends at 2.2 s, the window's end); W: warm-up, ignored.
C = RequestRecord(start=0.5, end=0.6, error="HTTP 500: boom")
D = RequestRecord(start=0.2, end=2.2, token_times=[0.3], first_token=0.3, output_tokens=1,
                  error="timeout after 2 s", timed_out=True)
W = rec(-1.0, [-0.5, -0.4])
W.warmup = True
RECORDS = [W, A, B, C, D]


def test_level_counts_and_rates():
    lv = compute_level(RECORDS, 4)
    assert (lv.requests, lv.warmup_requests, lv.completed, lv.errors, lv.timeouts) == (
        4, 1, 2, 2, 1)
    assert lv.error_rate == pytest.approx(0.5)
    assert lv.error_examples == ["HTTP 500: boom", "timeout after 2 s"]
    # window: first measured start 0.0 -> last measured end 2.2 (the timeout's end)
    assert lv.window_s == pytest.approx(2.2)
    assert lv.output_tokens == 5  # A 4 + B 1; the timed-out request's token does not count
    assert lv.output_tokens_per_s == pytest.approx(5 / 2.2)
    assert lv.requests_per_min == pytest.approx(2 / 2.2 * 60)


def test_level_latencies_exclude_failures_and_one_token_tpot():
    lv = compute_level(RECORDS, 4)
    assert lv.ttft_ms.n == 2 and lv.ttft_ms.mean == pytest.approx(75.0)
    assert lv.ttft_ms.p50 == pytest.approx(75.0)
    assert lv.e2e_ms.mean == pytest.approx((160 + 50) / 2)
    # B has one token: no TPOT, counted as excluded.
    assert lv.tpot_ms.n == 1 and lv.tpot_ms.p50 == pytest.approx(20.0)
    assert lv.tpot_excluded_one_token == 1
    assert lv.itl_ms.n == 3 and lv.itl_ms.mean == pytest.approx(20.0)
    assert lv.token_count_checked == 2 and lv.token_count_mismatches == 1


def test_tpot_undefined_for_one_token_and_first_token_excluded():
    assert tpot_s(B) is None
    # first token late (TTFT 1 s), then 3 tokens 10 ms apart: TPOT ignores the first wait.
    r = rec(0.0, [1.0, 1.01, 1.02, 1.03])
    assert tpot_s(r) == pytest.approx(0.01)


def test_ttft_uses_first_non_empty_chunk():
    # an empty-text token at 0.05 does not count as the first token; first_token says 0.08
    r = rec(0.0, [0.05, 0.08, 0.10], first=0.08)
    lv = compute_level([r], 1)
    assert lv.ttft_ms.p50 == pytest.approx(80.0)
    assert lv.tpot_ms.p50 == pytest.approx((100 - 80) / 2)


def test_itl_spreads_multi_token_chunks_and_keeps_chunk_gaps():
    # chunks of 2 then 3 tokens, 100 ms apart: 1 zero gap + 3 gaps of 33.3 ms
    r = rec(0.0, [0.1, 0.2], chunk_tokens=[2, 3], tokens=5)
    gaps = itl_s(r)
    assert gaps == pytest.approx([0.0, 0.1 / 3, 0.1 / 3, 0.1 / 3])
    assert sum(gaps) / len(gaps) == pytest.approx(tpot_s(r))  # mean ITL == TPOT
    lv = compute_level([r], 1)
    assert lv.chunk_itl_ms.n == 1 and lv.chunk_itl_ms.p50 == pytest.approx(100.0)
    assert lv.itl_ms.n == 4


def test_percentiles_are_numpy_linear_with_sample_flags():
    s = latency_stats([float(x) for x in range(1, 101)])
    assert (s.p50, s.p90, s.p95, s.p99) == pytest.approx((50.5, 90.1, 95.05, 99.01))
    assert s.mean == pytest.approx(50.5) and s.n == 100 and s.few_samples == []
    assert latency_stats([1.0] * 99).few_samples == ["p99"]
    assert latency_stats([1.0] * 19).few_samples == ["p95", "p99"]
    assert latency_stats([1.0] * 9).few_samples == ["p90", "p95", "p99"]
    empty = latency_stats([])
    assert empty.n == 0 and empty.p50 is None and empty.mean is None


def test_cost_per_million_tokens():
    # 1000 tokens over 1 s = 1000 tok/s; $3.6/h × 2 instances -> 7.2 / 3.6e6 × 1e6 = $2 per 1M
    r = RequestRecord(start=0.0, first_token=0.001, token_times=[0.001, 1.0], end=1.0,
                      output_tokens=1000)
    lv = compute_level([r], 1, usd_per_hour=3.6, instances=2)
    assert lv.output_tokens_per_s == pytest.approx(1000)
    assert lv.usd_per_1m_output_tokens == pytest.approx(2.0)
    assert compute_level([r], 1).usd_per_1m_output_tokens is None


def test_goodput_counts_requests_meeting_every_latency_gate():
    gates = [GateSpec(metric="ttft_ms", stat="p95", op="<=", threshold=80),
             GateSpec(metric="error_rate", stat="value", op="<=", threshold=0.5)]
    lv = compute_level(RECORDS, 4, gates=gates)
    # A (TTFT 100) misses, B (TTFT 50) meets; failures never count.
    assert lv.goodput == pytest.approx(1 / 2.2)
    assert lv.goodput_per_min == pytest.approx(60 / 2.2)
    # a TPOT gate does not count against the one-token request B
    lv = compute_level(RECORDS, 4, gates=[GateSpec(metric="tpot_ms", threshold=10)])
    assert lv.goodput == pytest.approx(1 / 2.2)


def test_goodput_needs_latency_gates_for_this_level():
    only_other_level = [GateSpec(metric="ttft_ms", threshold=80, concurrency=8)]
    lv = compute_level(RECORDS, 4, gates=only_other_level)
    assert lv.goodput is None and "latency gates" in lv.goodput_note


def test_all_failed_level_has_no_latencies_or_rates():
    lv = compute_level([C, D], 2)
    assert lv.error_rate == 1.0 and lv.completed == 0
    assert lv.ttft_ms.n == 0 and lv.output_tokens_per_s == 0
    empty = compute_level([], 2)
    assert empty.error_rate is None and empty.output_tokens_per_s is None


def test_saturation_reason():
    assert saturation_reason(GeneratorStats(loop_lag_p99_ms=1.0, cpu_pct=30)) is None
    busy = saturation_reason(GeneratorStats(loop_lag_p50_ms=0.5, loop_lag_p99_ms=50.0,
                                            cpu_pct=30))
    assert "lag" in busy and "machine was busy" in busy
    assert "lag" in saturation_reason(GeneratorStats(loop_lag_p50_ms=3.0, loop_lag_p99_ms=4.0))
    assert "CPU" in saturation_reason(GeneratorStats(loop_lag_p99_ms=1.0, cpu_pct=99))
    lv = compute_level([A], 1, saturated_reason="CPU 99%")
    assert lv.generator_saturated and lv.generator_saturated_reason == "CPU 99%"


def test_json_shape_matches_design():
    res = BenchResult(levels=[compute_level(RECORDS, 4)])
    out = res.model_dump(mode="json")
    lv = out["levels"][0]
    for key in ("concurrency", "requests", "errors", "error_rate", "output_tokens_per_s",
                "requests_per_min"):
        assert key in lv
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert {"mean", "p50", "p90", "p95", "p99", "n"} <= set(lv[metric])
    assert "TPOT" in out["formulas"]["tpot_ms"]
    assert BenchResult.model_validate(out) == res  # a stored result loads back (baseline)


def test_lengths_and_the_fixed_length_check():
    # three requests of a 4-token run: one came back short (3 tokens)
    recs = [rec(0.0, [0.1, 0.2, 0.3, 0.4], input_tokens=12, token_source="stream"),
            rec(0.0, [0.1, 0.2, 0.3, 0.4], input_tokens=12, token_source="stream"),
            rec(0.0, [0.1, 0.2, 0.3], input_tokens=14, token_source="tokenizer")]
    lv = compute_level(recs, 1, expected_output_tokens=4)
    assert (lv.output_length.min, lv.output_length.max, lv.output_length.n) == (3, 4, 3)
    assert (lv.input_length.min, lv.input_length.max) == (12, 14)
    assert lv.input_length.mean == pytest.approx(38 / 3)
    assert lv.output_length_mismatches == 1 and lv.output_length_examples == [3]
    assert lv.token_sources == {"stream": 2, "tokenizer": 1}
    assert compute_level(recs, 1).output_length_mismatches == 0  # no length asked for


def test_repeats_have_their_own_windows_and_figures():
    # two repeats of one request each, run 100 s apart: the gap is nobody's throughput
    r0 = rec(0.0, [0.1, 0.2, 0.3, 0.5])
    r1 = rec(100.0, [100.2, 100.3, 100.4, 101.0])
    r1.repeat = 1
    lv = compute_level([r0, r1], 1)
    assert lv.window_s == pytest.approx(0.5 + 1.0)
    assert lv.output_tokens_per_s == pytest.approx(8 / 1.5)
    assert [r.ttft_ms_p50 for r in lv.repeats] == pytest.approx([100.0, 200.0])
    assert [r.output_tokens_per_s for r in lv.repeats] == pytest.approx([8.0, 4.0])
    assert compute_level([r0], 1).repeats == []  # one repeat: nothing to list


def arrivals_with_ttft(ttfts_ms):
    return [rec(float(i), [i + t / 1000, i + t / 1000 + 0.01]) for i, t in enumerate(ttfts_ms)]


def test_open_loop_saturation_is_latency_that_keeps_growing():
    steady = arrivals_with_ttft([100, 110, 95, 105, 100, 98, 104, 101])
    growing = arrivals_with_ttft([100, 150, 220, 300, 380, 460, 540, 620])
    assert open_loop_saturation(steady) is None
    assert "grew from" in open_loop_saturation(growing)
    assert open_loop_saturation(growing[:5]) is None  # too few to tell
    lv_ok = compute_level(steady, 64, rate_rps=1.0)
    lv_sat = compute_level(growing, 64, rate_rps=4.0)
    held = compute_level(steady, 64, rate_rps=2.0, cap_waits=3)
    assert not lv_ok.saturated and lv_sat.saturated and held.saturated
    assert "in-flight" in held.saturation_reason
    assert saturation_rate([lv_ok, lv_sat, held]) == 2.0
    assert saturation_rate([lv_ok]) is None
    # closed-loop levels are never "saturated" in this sense
    assert not compute_level(growing, 64).saturated


# ---- edges, each worked out by hand ----------------------------------------------------------

def test_latency_stats_exact_and_which_percentiles_lack_samples():
    s = latency_stats([50, 10, 40, 20, 30])
    # linear interpolation over the sorted 10..50: rank q x (n - 1)
    assert (s.mean, s.p50, s.p90, s.p95, s.p99, s.n) == (30.0, 30.0, 46.0, 48.0, 49.6, 5)
    assert s.few_samples == ["p90", "p95", "p99"]  # need 10, 20, 100 samples
    assert latency_stats([]) == LatencyStats(n=0, few_samples=["p50", "p90", "p95", "p99"])
    assert latency_stats([7]).few_samples == ["p50", "p90", "p95", "p99"]
    assert latency_stats([7, 9]).few_samples == ["p90", "p95", "p99"]


def test_missing_timestamps_give_no_latency():
    no_first = RequestRecord(start=1.0, end=2.0, output_tokens=3)
    no_end = RequestRecord(start=1.0, first_token=1.1, output_tokens=3)
    assert ttft_s(no_first) is None and e2e_s(no_end) is None
    assert tpot_s(no_first) is None and tpot_s(no_end) is None
    assert ttft_s(no_end) == pytest.approx(0.1) and e2e_s(no_first) == 1.0


def test_tpot_of_two_tokens_is_the_gap_after_the_first():
    r = rec(1.0, [1.1, 1.4])
    assert tpot_s(r) == pytest.approx(0.3)
    assert compute_level([r], 1).tpot_excluded_one_token == 0


def test_itl_skips_chunks_that_carry_no_token_and_goes_on():
    r = rec(0.0, [0.1, 0.2, 0.4], tokens=3)
    r.chunk_tokens = [1, 0, 2]
    assert itl_s(r) == pytest.approx([0.1, 0.1])  # 0.2 -> 0.4 spread over 2 tokens
    assert itl_s(RequestRecord(start=0.0)) == []


# R: TTFT 100 ms, E2E 200 ms, 4 tokens: TPOT 100/3 ms; ITL 10, 30, 60 ms
# (mean 33.3, p50 30, p90 54).
R = rec(0.0, [0.1, 0.11, 0.14, 0.2])


@pytest.mark.parametrize(("metric", "stat", "meets", "misses"), [
    ("ttft_ms", "p95", 100.1, 99.9),
    ("e2e_ms", "p99", 200.1, 199.9),
    ("tpot_ms", "p50", 33.4, 33.3),
    ("itl_ms", "mean", 33.4, 33.3),
    ("itl_ms", "p50", 30.1, 29.9),
    ("itl_ms", "p90", 54.1, 53.9),
])
def test_a_request_meets_an_slo_by_its_own_value(metric, stat, meets, misses):
    assert meets_slos(R, [GateSpec(metric=metric, stat=stat, threshold=meets)])
    assert not meets_slos(R, [GateSpec(metric=metric, stat=stat, threshold=misses)])


def test_failed_requests_never_meet_slos_and_missing_values_do_not_count():
    assert not meets_slos(C, [])
    one_token_no_gaps = rec(0.0, [0.05])
    assert meets_slos(one_token_no_gaps, [GateSpec(metric="itl_ms", stat="p50", threshold=1),
                                          GateSpec(metric="tpot_ms", threshold=1)])


def test_error_examples_are_distinct_truncated_and_at_most_three():
    long = "x" * 400
    failed = [RequestRecord(start=0.0, end=1.0, error=long),
              RequestRecord(start=0.0, end=1.0, error=long),
              RequestRecord(start=0.0, end=1.0, timed_out=True),
              RequestRecord(start=0.0, end=1.0, error="HTTP 503"),
              RequestRecord(start=0.0, end=1.0, error="HTTP 500")]
    lv = compute_level(failed, 1)
    assert lv.error_examples == ["x" * 300, "timeout", "HTTP 503"]
    assert (lv.errors, lv.timeouts) == (5, 1)


def test_window_runs_from_the_first_start_to_the_last_end():
    lv = compute_level([rec(10.0, [10.5, 11.0]), rec(10.5, [11.5, 12.0])], 2)
    assert lv.window_s == pytest.approx(2.0)
    assert lv.output_tokens_per_s == pytest.approx(2.0)
    assert lv.requests_per_min == pytest.approx(60.0)


def test_no_window_without_ends_or_with_zero_length():
    no_end = compute_level([RequestRecord(start=3.0, error="refused")], 1)
    assert (no_end.window_s, no_end.output_tokens_per_s, no_end.requests_per_min) == (
        None, None, None)
    instant = compute_level([RequestRecord(start=3.0, end=3.0, first_token=3.0,
                                           token_times=[3.0], output_tokens=1)], 1,
                            gates=[GateSpec(metric="ttft_ms", threshold=1)])
    assert (instant.window_s, instant.output_tokens_per_s, instant.goodput) == (None, None, None)


def test_token_count_mismatches_count_only_disagreements():
    lv = compute_level([rec(0.0, [0.1, 0.2], reported=2), rec(0.0, [0.1], reported=3),
                        rec(0.0, [0.1], reported=0), rec(0.0, [0.1])], 1)
    assert (lv.token_count_checked, lv.token_count_mismatches) == (3, 2)


def test_goodput_with_a_gate_for_this_level_and_its_settings_pass_through():
    gen = GeneratorStats(cpu_pct=12.0)
    lv = compute_level([R], 4, rate_rps=2.5, generator=gen,
                       gates=[GateSpec(metric="ttft_ms", threshold=150)])
    assert lv.goodput == pytest.approx(1 / 0.2) and lv.goodput_note is None
    assert (lv.rate_rps, lv.generator, lv.concurrency) == (2.5, gen, 4)
    # a gate pinned to closed-loop concurrency 4 is not about an open-loop level capped at 4
    pinned = compute_level([R], 4, rate_rps=2.5,
                           gates=[GateSpec(metric="ttft_ms", threshold=150, concurrency=4)])
    assert pinned.goodput is None and compute_level(
        [R], 4, gates=[GateSpec(metric="ttft_ms", threshold=150, concurrency=4)]).goodput
    assert compute_level([R], 4).goodput_note == (
        "goodput needs latency gates (ttft_ms, tpot_ms, itl_ms, e2e_ms)")


def test_cost_defaults_to_one_instance():
    r = RequestRecord(start=0.0, first_token=0.001, token_times=[0.001, 1.0], end=1.0,
                      output_tokens=1000)
    assert compute_level([r], 1, usd_per_hour=3.6).usd_per_1m_output_tokens == pytest.approx(
        1.0, rel=1e-12)
    assert compute_level([r], 1, usd_per_hour=3.6, instances=2
                         ).usd_per_1m_output_tokens == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize(("stats", "expected"), [
    (GeneratorStats(loop_lag_p50_ms=2.0, loop_lag_p99_ms=10.0, cpu_pct=85.0), None),
    (GeneratorStats(), None),
    (GeneratorStats(loop_lag_p99_ms=12.0),
     "event-loop lag p50 0.0 ms, p99 12.0 ms (limits 2, 10 ms): timestamps late by that much"),
    (GeneratorStats(loop_lag_p50_ms=2.5),
     "event-loop lag p50 2.5 ms, p99 0.0 ms (limits 2, 10 ms): timestamps late by that much"),
    (GeneratorStats(loop_lag_p50_ms=3.0, loop_lag_p99_ms=20.0, cpu_pct=50.0),
     "event-loop lag p50 3.0 ms, p99 20.0 ms (limits 2, 10 ms): timestamps late by that much"),
    (GeneratorStats(loop_lag_p50_ms=3.0, loop_lag_p99_ms=20.0, cpu_pct=49.0),
     "event-loop lag p50 3.0 ms, p99 20.0 ms (limits 2, 10 ms): timestamps late by that much"
     "; the generator used only 49% of a core, so the machine was busy"),
    (GeneratorStats(loop_lag_p99_ms=11.0, cpu_pct=90.0),
     "event-loop lag p50 0.0 ms, p99 11.0 ms (limits 2, 10 ms): timestamps late by that much"
     "; generator CPU 90% of a core > 85%"),
])
def test_saturation_reason_limits_are_exclusive_and_reasons_join(stats, expected):
    assert saturation_reason(stats) == expected
