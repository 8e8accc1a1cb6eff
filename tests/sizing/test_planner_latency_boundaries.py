"""The latency planner's decisions at the exact point where they flip, on a toy GPU whose
prediction is worked out by hand from the formulas in sizing/latency.py.

Toy model of test_plan_boundaries (10 M bf16 parameters, 4 layers, vocab 1000 x hidden 256,
untied), 900 input + 100 output tokens, on "TOY GPU": 20.4608 GB/s, 100 dense TFLOPS, factors
eta_mem = eta_compute = 1, 1 ms per engine step, no request overhead, no all-reduce cost.
One request alone on a copy:

  decode step = (weights read W + KV of its 950-token average context) / BW + 1 ms
    W  = 20,000,000 B - 1000 x 256 x 2 B (the input embedding is a lookup) = 19,488,000 B
    KV = 950 tokens x 1,024 B = 972,800 B;  W + KV = 20,460,800 B = 1 ms at 20.4608 GB/s
    compute = 2 x 9,744,000 + 4 x 256 x 3,800 FLOP = 0.23 us: memory-bound
  TPOT(1) = 1 ms + 1 ms = 2.0 ms exactly (nothing else runs: no queue)
  TTFT(1) = prefill = max(900 x 19,488,000 + 2 x 256 x 900 x 3,600 FLOP at 100 TFLOPS
                          = 0.192 ms, W / BW = 0.952455 ms) + 1 ms = 1.952455 ms
  E2E(1)  = TTFT + 99 x TPOT = 199.952455 ms;  tokens/s = 100 / E2E

Two requests on a copy always decode slower than one (a step holds at least one decoding
sequence, and the other's prefill stretches it), so a TPOT limit of exactly 2.0 ms at a zero
margin is met by one request per copy and by no more: every case below scales or fails from
that. GPUs hold 80 GB, so memory never binds.
"""

import pytest
from lmiflow.sizing.accelerators import Accelerator
from lmiflow.sizing.catalog import CPU, catalog_with, local_instance_row
from lmiflow.sizing.latency import (
    ALLREDUCE_LATENCY_MS,
    ENGINE_EFFICIENCY,
    Efficiency,
    Roofline,
    latency_inputs,
)
from lmiflow.sizing.memory import resolve_dtypes
from lmiflow.sizing.planner import (
    FactorsUsed,
    LatencyLimit,
    PlanRequest,
    _largest_meeting,
    _violations,
    efficiency_for,
    plan,
)

from tests.sizing.test_plan_boundaries import exactly, request, row, toy

W, KV, BW = 19_488_000, 950 * 1024, 20.4608e9
TPOT1 = 2.0
TTFT1 = W / BW * 1e3 + 1.0
E2E1 = TTFT1 + 99 * TPOT1
HAIR = 1e-9
EFF = Efficiency(memory=1.0, compute=1.0, step_overhead_ms=1.0, request_overhead_ms=0.0,
                 allreduce_latency_ms=0.0)


def gpu(name="TOY GPU", bandwidth=20.4608, cc=9.0, interconnect="nvlink"):
    return Accelerator(name=name, architecture="toy", compute_capability=cc,
                       memory_bandwidth_gbps=bandwidth, fp16_tflops=100.0, bf16_tflops=100.0,
                       fp8_tflops=None, supports_bf16=True, supports_fp8=False,
                       interconnect=interconnect, interconnect_gbps=100.0, smi_pattern="",
                       source="test")


ACCELERATORS = {"TOY GPU": gpu(), "FAST GPU": gpu("FAST GPU", bandwidth=204.608)}
CALIBRATED = {("TOY GPU", "vllm"): (EFF, 3), ("FAST GPU", "vllm"): (EFF, 3)}


def toy_row(name="ml.toy.large", price=1.0, accelerator="TOY GPU"):
    return row(name, 1, 80_000_000_000, price, accelerator=accelerator)


# No error band: a prediction is checked as it is (the band's own edge is tested below).
EXACT = {"ttft_ms": (1.0, 1.0), "tpot_ms": (1.0, 1.0)}


def toy_plan(*limits, concurrency=1, rows=None, calibration=CALIBRATED, error_band=EXACT,
             **kw):
    req = PlanRequest(max_input_tokens=900, max_output_tokens=100, concurrency=concurrency,
                      gpu_memory_utilization=1.0, latency_limits=list(limits),
                      error_band=error_band, **kw)
    return plan(toy(), req, catalog_with(rows or [toy_row()]), ACCELERATORS, calibration)


def tpot(ms, **kw):
    return LatencyLimit(metric="tpot_ms", threshold=ms, source="gate", **kw)


def test_prediction_of_one_request_is_the_hand_computed_roofline():
    o = toy_plan().chosen
    assert o.predicted.tpot_ms == pytest.approx(TPOT1, rel=1e-12)
    assert o.predicted.ttft_ms == pytest.approx(TTFT1, rel=1e-12)
    assert o.predicted.e2e_ms == pytest.approx(E2E1, rel=1e-12)
    assert o.predicted.output_tokens_per_s == pytest.approx(100 / (E2E1 / 1e3))
    # $1/h over 100 / 0.19995 s tokens/s: dollars per million output tokens
    assert o.usd_per_1m_output_tokens == pytest.approx(1.0 / (100 / (E2E1 / 1e3) * 3600) * 1e6)


def roofline(spec):
    dtypes = resolve_dtypes(spec, "auto", "auto")
    return Roofline(latency_inputs(spec, dtypes, gpu(), "vllm", 1, 900, 100, 1), EFF)


def test_latency_at_a_concurrency_is_the_prediction_at_it():
    roof = roofline(toy())
    at1 = roof.latency_ms(1)
    assert {k: at1[k] for k in ("ttft_ms", "tpot_ms", "e2e_ms")} == pytest.approx(
        {"ttft_ms": TTFT1, "tpot_ms": TPOT1, "e2e_ms": E2E1}, rel=1e-12)
    # one request alone waits for nobody: every TTFT percentile is its TTFT
    assert [at1[f"ttft_ms@{s}"] for s in ("p50", "p90", "p95", "p99")] == pytest.approx(
        [TTFT1] * 4, rel=1e-12)
    p = roof.predict(3)
    at3 = roof.latency_ms(3)
    assert {k: at3[k] for k in ("ttft_ms", "tpot_ms", "e2e_ms")} == {
        "ttft_ms": p.ttft_ms, "tpot_ms": p.tpot_ms, "e2e_ms": p.e2e_ms}
    assert {k.removeprefix("ttft_ms@"): v for k, v in at3.items() if "@" in k} == (
        p.ttft_tail_ms)


def test_a_tied_model_reads_its_embedding_once_as_the_output_head():
    # Tied: no separate input embedding to skip, all 20,000,000 B are read per step.
    tied = toy().model_copy(update={"tie_word_embeddings": True})
    assert roofline(tied).latency_ms(1)["tpot_ms"] == pytest.approx(
        (20_000_000 + KV) / BW * 1e3 + 1.0, rel=1e-12)


def test_a_limit_met_exactly_passes_and_one_missed_by_a_hair_fails_naming_both_figures():
    met = toy_plan(tpot(TPOT1), latency_margin=0).chosen
    assert met is not None and met.eligible and met.binding is None
    assert met.reason == ("fits: 1 model copy of tp 1; holds 1 concurrent requests within "
                          "the latency limits; TPOT p50 likely up to 2.0 ms, 0% below the "
                          "2 ms limit")
    missed = toy_plan(tpot(TPOT1 * (1 - HAIR)), latency_margin=0)
    o = missed.options[0]
    assert missed.chosen is None and o.fits and not o.eligible and o.binding == "latency"
    assert o.reason == "predicted TPOT p50 2.0 ms > gate 2 ms at 1 request per copy"
    assert missed.chosen_reason == (
        "1 option(s) fit in memory but none meets the latency limits; the cheapest fitting is "
        "ml.toy.large (tp 1): predicted TPOT p50 2.0 ms > gate 2 ms at 1 request per copy")


def test_the_margin_edge_is_met_and_a_hair_inside_it_is_rejected():
    # margin 0.5 of a 4 ms limit leaves exactly 2.0 ms
    edge = toy_plan(tpot(4.0), latency_margin=0.5).options[0]
    assert edge.eligible
    inside = toy_plan(tpot(4.0 * (1 - HAIR)), latency_margin=0.5).options[0]
    assert inside.binding == "latency"
    assert inside.reason == ("predicted TPOT p50 2.0 ms > gate 4 ms less the 50% margin "
                             "at 1 request per copy")


def test_every_missed_limit_is_named_in_the_reason():
    o = toy_plan(LatencyLimit(metric="ttft_ms", threshold=TTFT1 * (1 - HAIR), source="slo"),
                 tpot(TPOT1 * (1 - HAIR)), latency_margin=0).options[0]
    assert o.reason == ("predicted TTFT p50 2.0 ms > slo 1.95246 ms; "
                        "predicted TPOT p50 2.0 ms > gate 2 ms at 1 request per copy")


def test_max_concurrency_of_a_latency_bound_option_is_what_meets_the_limit():
    # Three requests on one instance: memory holds them all, the limit only one.
    o = toy_plan(tpot(TPOT1), concurrency=3, latency_margin=0).options[0]
    assert o.binding == "latency" and o.instance_count == 1
    assert (o.max_concurrency, o.max_concurrency_per_copy) == (1, 1)
    assert o.reason.startswith("predicted TPOT p50 ")
    assert o.reason.endswith("> gate 2 ms at 3 request(s) per copy")


def test_latency_scales_out_to_exactly_max_instance_count():
    c = toy_plan(tpot(TPOT1), concurrency=3, latency_margin=0, max_instance_count=3).chosen
    assert c is not None and c.instance_count == 3 and c.concurrency_per_copy == 1
    assert c.usd_per_hour == pytest.approx(3.0)
    assert c.reason == ("fits: 1 model copy of tp 1 on each of 3 instances; holds 3 concurrent "
                        "requests (1 per copy) within the latency limits; TPOT p50 likely up "
                        "to 2.0 ms, 0% below the 2 ms limit")
    short = toy_plan(tpot(TPOT1), concurrency=3, latency_margin=0, max_instance_count=2)
    assert short.chosen is None and short.options[0].instance_count == 1


def test_a_limit_no_single_request_meets_adds_no_instance():
    o = toy_plan(tpot(TPOT1 * (1 - HAIR)), latency_margin=0, max_instance_count=4).options[0]
    assert o.binding == "latency" and o.instance_count == 1 and o.max_concurrency == 0


def test_a_latency_miss_on_several_instances_says_how_many():
    # Four requests over the two instances asked for: two per copy, the limit holds one.
    o = toy_plan(tpot(TPOT1), concurrency=4, latency_margin=0, instance_count=2).options[0]
    assert o.binding == "latency" and o.instance_count == 2
    assert o.reason.endswith("> gate 2 ms at 2 request(s) per copy on 2 instances")
    assert o.max_concurrency == 2  # one per copy on each instance


def test_a_level_limit_adds_the_instances_its_concurrency_needs():
    # The workload is one request; the gate's level is two in flight: one per copy takes two
    # instances, the third allowed one is not needed.
    c = toy_plan(tpot(TPOT1, concurrency=2), latency_margin=0, max_instance_count=3).chosen
    assert c is not None and c.instance_count == 2
    capped = toy_plan(tpot(TPOT1, concurrency=3), latency_margin=0, max_instance_count=2)
    o = capped.options[0]
    assert o.binding == "latency" and o.instance_count == 2
    assert o.reason.endswith("at 1 request per copy on 2 instances")


def test_a_level_limit_already_met_adds_no_instance():
    c = toy_plan(tpot(TPOT1, concurrency=1), latency_margin=0, max_instance_count=3).chosen
    assert c.instance_count == 1


def test_a_level_limit_is_spread_over_the_instances_asked_for():
    c = toy_plan(tpot(TPOT1, concurrency=2), latency_margin=0, instance_count=2).chosen
    assert c is not None and c.instance_count == 2


def test_calibrated_flag_and_the_number_of_records_behind_it():
    one = toy_plan(calibration={("TOY GPU", "vllm"): (EFF, 1)})
    assert one.chosen.predicted.calibrated is True
    assert one.calibration == {"TOY GPU": "vllm factors calibrated from 1 benchmark record(s)"}
    assert one.factors == {"TOY GPU": FactorsUsed(engine="vllm", records=1, efficiency=EFF)}
    assert one.calibration_used() == {("TOY GPU", "vllm"): (EFF, 1)}
    default = toy_plan(calibration=None)
    assert default.chosen.predicted.calibrated is False
    assert default.calibration == {"TOY GPU": "uncalibrated vllm defaults"}
    assert default.factors["TOY GPU"].records == 0
    assert default.calibration_used() == {}  # defaults are not a fit to pass on


def test_the_chosen_reason_says_the_latency_limits_are_met():
    p = toy_plan(tpot(TPOT1), latency_margin=0)
    assert p.chosen_reason == ("cheapest option that fits the workload: ml.toy.large with tp 1 "
                               "and meets the latency limits at $1.00/h")


def test_latency_and_price_blocking_different_options_are_both_named():
    # The cheap TOY GPU misses the limit; the FAST GPU (10x the bandwidth) meets it but costs
    # more than the ceiling.
    p = toy_plan(tpot(TPOT1 * (1 - HAIR)), latency_margin=0, max_usd_per_hour=2.0,
                 rows=[toy_row(), toy_row("ml.fast.large", 5.0, "FAST GPU")])
    assert p.chosen is None
    assert p.chosen_reason.startswith(
        "2 option(s) fit in memory but none meets the latency limits and the price ceiling "
        "$2.0/h; the cheapest fitting is ml.toy.large (tp 1): predicted TPOT p50 ")


def test_a_very_slow_gpu_still_gets_a_cost_per_token():
    # 1000x slower: a step takes over a second, under one token per second.
    slow = {("SLOW GPU", "vllm"): (EFF, 3)}
    p = plan(toy(), PlanRequest(max_input_tokens=900, max_output_tokens=100, concurrency=1,
                                gpu_memory_utilization=1.0),
             catalog_with([toy_row(accelerator="SLOW GPU")]),
             {"SLOW GPU": gpu("SLOW GPU", bandwidth=0.0204608)}, slow)
    pr = p.chosen.predicted
    assert pr.output_tokens_per_s < 1
    assert p.chosen.usd_per_1m_output_tokens == pytest.approx(
        1.0 / (pr.output_tokens_per_s * 3600) * 1e6)


# --- the rules themselves, on hand-picked figures ---------------------------------------------

def test_violations_at_the_limit_and_at_the_margin_edge():
    lim = [tpot(50)]
    assert _violations({"tpot_ms": 50.0}, lim, 0.0, EXACT) == []
    assert _violations({"tpot_ms": 45.0}, lim, 0.1, EXACT) == []  # 50 x (1 - 0.1) = 45
    assert _violations({"tpot_ms": 45.01}, lim, 0.1, EXACT) == [
        "predicted TPOT p50 45 ms > gate 50 ms less the 10% margin"]
    assert _violations({"tpot_ms": 50.01}, lim, 0.0, EXACT) == [
        "predicted TPOT p50 50 ms > gate 50 ms"]
    # whole milliseconds from 10 ms on, tenths below
    assert _violations({"tpot_ms": 9.96}, [tpot(9)], 0.0, EXACT) == [
        "predicted TPOT p50 10.0 ms > gate 9 ms"]


def test_a_limit_is_met_when_the_upper_end_of_the_error_band_meets_it():
    band = {"tpot_ms": (0.8, 1.25)}
    # 40 ms x 1.25 = 50 ms: the likely upper end sits on the limit
    assert _violations({"tpot_ms": 40.0}, [tpot(50)], 0.0, band) == []
    assert _violations({"tpot_ms": 40.01}, [tpot(50)], 0.0, band) == [
        "predicted TPOT p50 40 ms (likely up to 50 ms) > gate 50 ms"]
    # the planner checks the same way and says how far below the limit the upper end is
    o = toy_plan(tpot(TPOT1 * 1.25), error_band={"tpot_ms": (0.8, 1.25)}).chosen
    assert o is not None and o.predicted.limits[0].upper == pytest.approx(TPOT1 * 1.25)
    assert o.predicted.limits[0].headroom_pct == pytest.approx(0.0, abs=1e-9)
    assert o.predicted.likely_ms["tpot_ms"] == pytest.approx((TPOT1 * 0.8, TPOT1 * 1.25))
    assert toy_plan(tpot(TPOT1 * 1.25 * (1 - HAIR)),
                    error_band={"tpot_ms": (0.8, 1.25)}).chosen is None


def test_a_ttft_gate_on_p95_is_checked_against_the_predicted_p95():
    at = {"ttft_ms": 100.0, "ttft_ms@p95": 300.0}
    lim = LatencyLimit(metric="ttft_ms", stat="p95", threshold=200, source="gate")
    assert _violations(at, [lim], 0.0, EXACT) == ["predicted TTFT p95 300 ms > gate 200 ms"]
    assert _violations(at, [lim.model_copy(update={"stat": "p50"})], 0.0, EXACT) == []


def test_a_gate_on_a_statistic_the_model_does_not_predict_is_refused():
    with pytest.raises(ValueError, match="a tpot_ms limit on p95 cannot be planned"):
        LatencyLimit(metric="tpot_ms", stat="p95", threshold=50)


class Linear:
    """A copy whose TPOT is 10 ms per request in flight."""

    def latency_ms(self, b):
        return {"ttft_ms": 1.0, "tpot_ms": 10.0 * b, "e2e_ms": 100.0 * b}


@pytest.mark.parametrize("most", [0, 1, 2, 3, 7, 10, 16])
@pytest.mark.parametrize("limit_ms", [5, 10, 20, 30, 40, 50, 90, 100, 160, 170])
def test_largest_meeting_is_the_last_concurrency_under_the_limit(most, limit_ms):
    # 10 x b <= limit: b = limit // 10, at most `most`; 0 when one request already misses.
    expected = min(limit_ms // 10, most)
    assert _largest_meeting(Linear(), [tpot(limit_ms)], 0.0, most, EXACT) == expected


def test_efficiency_without_facts_is_none_from_no_records():
    assert efficiency_for(None, "vllm", {}) == (None, 0)


def test_default_efficiency_takes_the_interconnects_allreduce_latency():
    eff, records = efficiency_for(gpu(interconnect="nvlink"), "trtllm", {})
    assert records == 0
    assert eff == Efficiency(**ENGINE_EFFICIENCY["trtllm"],
                             allreduce_latency_ms=ALLREDUCE_LATENCY_MS["nvlink"])
    pcie = efficiency_for(gpu(interconnect="pcie"), "vllm", {})[0].allreduce_latency_ms
    assert pcie == ALLREDUCE_LATENCY_MS["pcie"] > ALLREDUCE_LATENCY_MS["nvlink"]


# --- memory-side wording and boundaries the latency work added -------------------------------

def test_fp8_weights_need_compute_capability_8_and_no_less():
    gpus = {"AMPERE": gpu("AMPERE", cc=8.0), "TURING": gpu("TURING", cc=7.5)}
    rows = [toy_row("ml.a.large", accelerator="AMPERE"),
            toy_row("ml.t.large", accelerator="TURING")]
    req = PlanRequest(max_input_tokens=900, max_output_tokens=100, concurrency=1,
                      gpu_memory_utilization=1.0, dtype="fp8")
    p = plan(toy(), req, catalog_with(rows), gpus, {})
    by = {o.instance_type: o for o in p.options}
    assert by["ml.a.large"].binding is None
    assert by["ml.t.large"].binding == "dtype"
    assert by["ml.t.large"].reason == "fp8 weights need an Ampere or newer GPU, not TURING"


def test_cpu_host_claims_no_concurrency_and_keeps_its_memory_source():
    cat = catalog_with([local_instance_row(CPU, 1, 80_000_000_000, memory_source="free RAM")])
    p = plan(toy(), PlanRequest(max_input_tokens=900, max_output_tokens=100, concurrency=1,
                                gpu_memory_utilization=1.0, engine="local"), cat, {}, {})
    o = p.chosen
    assert o.reason == "fits: 1 model copy of tp 1"
    assert o.memory_source == "free RAM"
    assert p.chosen_reason == ("fits the workload: local with tp 1 (no known price: this machine "
                               "is not billed by the hour)")


def test_unpriced_options_without_a_price_source_say_so_plainly():
    r = toy_row(price=None) | {"price_source": "", "memory_source": ""}
    p = toy_plan(rows=[r])
    assert p.chosen.memory_source == ""
    assert p.chosen_reason == "fits the workload: ml.toy.large with tp 1 (no known price)"


def test_instances_asked_for_are_kept_when_memory_holds_exactly_their_share():
    # 4 requests on the 3 instances asked for: 2 per copy, and each GPU holds exactly 2. Two
    # instances would also hold them, but the config asked for three.
    o = plan(toy(), request(4, instance_count=3),
             catalog_with([row("ml.x.large", 1, exactly(2), 1.0)])).options[0]
    assert o.binding is None and o.instance_count == 3 and o.concurrency_per_copy == 2


def test_a_kv_cache_miss_names_the_instance_count_only_when_there_are_several():
    one = plan(toy(), request(4), catalog_with([row("ml.x.large", 1, exactly(4) - 1, 1.0)]))
    assert " per GPU); the engine would queue the other 1 per copy for a batch slot: " in (
        one.options[0].reason)
    two = plan(toy(), request(8, instance_count=2),
               catalog_with([row("ml.x.large", 1, exactly(4) - 1, 1.0)]))
    o = two.options[0]
    assert o.binding == "kv_cache" and o.instance_count == 2
    assert o.reason.startswith("KV cache: room for 3 sequence(s) of 1000 tokens per copy, "
                               "need 4 (")
    assert " per GPU) on 2 instances; the engine would queue" in o.reason
