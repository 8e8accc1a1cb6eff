"""How the load shapes a prediction, worked out by hand on the toy model and GPU of
test_planner_latency_boundaries (a single-request decode step reads 19,488,000 B at
20.4608 GB/s, plus a 1 ms step overhead): clients in step and out of step, an offline
harness's static batch, Poisson arrivals (Erlang C for a batch slot), and the all-reduce cost
of NVLink against PCIe."""

import pytest
from lmiflow.sizing.latency import (
    ALLREDUCE_BUS_EFFICIENCY,
    ALLREDUCE_LATENCY_MS,
    Roofline,
    _erlang_c,
    default_efficiency,
    latency_inputs,
)
from lmiflow.sizing.memory import resolve_dtypes

from tests.sizing.test_plan_boundaries import toy
from tests.sizing.test_planner_latency_boundaries import BW, EFF, W, gpu

KV_PER_TOKEN = 1024  # all 4 layers, one GPU at tp 1
PEAK = 100e12  # the toy GPU's bf16 tensor peak
FLOPS_PER_TOKEN = 2 * (10_000_000 - 1000 * 256)  # the input embedding is a lookup
IN_STEP = EFF.model_copy(update={"sync": 1.0})


def inputs(s=900, m=10, b=4, **update):
    spec = toy()
    return latency_inputs(spec, resolve_dtypes(spec, "auto", "auto"), gpu(), "vllm", 1, s, m,
                          b).model_copy(update=update)


def step(b, s=900, m=10):
    """A memory-bound decode step of b sequences at the average context S + M/2."""
    return (W + b * KV_PER_TOKEN * (s + m / 2)) / BW + 1e-3


def prefill(prompts=1, s=900):
    """max(compute, one read of the weights) + one step overhead: every case here fits one
    8,192-token chunk. Causal attention: 2 x q_dim x S x (layers x S) flops per prompt."""
    flops = prompts * (s * FLOPS_PER_TOKEN + 2 * 256 * s * 4 * s)
    return max(flops / PEAK, W / BW) + 1e-3


def test_clients_in_step_decode_unstretched_between_their_prefill_bunches():
    # Four fixed-length clients on a prefill-first engine: each cycle, the four prefills run
    # back to back while decodes wait, then the four decode together, no prefill among them.
    p = Roofline(inputs(), IN_STEP).predict(4)
    t_p = prefill()
    assert p.ttft_ms == pytest.approx((1.5 * t_p + t_p) * 1e3)  # (b - 1)/2 prefills ahead
    assert p.tpot_ms == pytest.approx(step(4) * 1e3)
    # every client's cycle holds all four prefills and its nine later tokens
    assert p.e2e_ms == pytest.approx((4 * t_p + 9 * step(4)) * 1e3)
    # out of step, the others' prefills land between decode steps and stretch them
    out = Roofline(inputs(), EFF).predict(4)
    assert out.tpot_ms > step(3) * 1e3 and out.ttft_ms < p.ttft_ms


@pytest.mark.parametrize("update", [{"lengths_vary": True}, {"mixed_prefill": True}])
def test_varying_lengths_or_mixed_prefill_steps_put_clients_out_of_step(update):
    # An in-step engine family behaves as an out-of-step one when the requests' lengths vary
    # (they finish apart) or when its steps mix prefill chunks with decodes (vLLM V1).
    drifted = Roofline(inputs(**update), IN_STEP).predict(4)
    assert drifted == Roofline(inputs(), EFF).predict(4)


def test_prefill_first_steps_keep_clients_in_step_whatever_the_family_default():
    assert Roofline(inputs(mixed_prefill=False), EFF).predict(4) == Roofline(
        inputs(), IN_STEP).predict(4)


def test_an_offline_harness_runs_one_static_batch_of_its_size():
    # gptSessionBenchmark / benchmark_latency: eight prompts prefilled together (compute-bound
    # at eight: 154 GFLOP at 100 TFLOP/s), then all eight decode to the end, even where a
    # server would admit only four at a time; no per-request cost.
    eff = EFF.model_copy(update={"request_overhead_ms": 50.0})
    p = Roofline(inputs(b=8, served=False, max_batch=4), eff).predict(8)
    assert prefill(8) > W / BW + 1e-3 * 1.5  # the batch's prefill is compute-bound
    assert p.ttft_ms == pytest.approx(prefill(8) * 1e3)
    assert p.tpot_ms == pytest.approx(step(8) * 1e3)
    assert p.e2e_ms == pytest.approx((prefill(8) + 9 * step(8)) * 1e3)
    assert (p.slots, p.queued, p.terms_ms["slot_wait"]) == (8, 0, 0.0)


@pytest.mark.parametrize("c, a, expected", [
    (1, 0.3, 0.3),  # M/M/1: an arrival waits with probability rho
    (2, 1.0, 1 / 3),  # (a^2/2! x 2/(2-1)) / (1 + a + a^2/2! x 2/(2-1))
    (3, 2.0, (8 / 6 * 3) / (1 + 2 + 2 + 8 / 6 * 3)),
])
def test_erlang_c_is_the_m_m_c_probability_of_waiting(c, a, expected):
    assert _erlang_c(c, a) == pytest.approx(expected)


def test_open_loop_waits_for_a_slot_as_an_m_m_c_queue():
    # Two batch slots: Poisson arrivals at 90 % of what two slots serve.
    roof = Roofline(inputs(max_batch=2), EFF)
    e2e_full = roof.solve(2)[0]
    rate = 0.9 * 2 / e2e_full
    got = roof.open_loop(rate)
    t_p, a = roof.prefill, rate * e2e_full
    rho = rate * t_p
    slot_wait = _erlang_c(2, a) * e2e_full / (2 - a)
    ttft = rho * t_p / (2 * (1 - rho)) + t_p + slot_wait
    assert got["ttft_ms"] == pytest.approx(ttft * 1e3)
    assert slot_wait > 3 * t_p  # near capacity the slot, not the prefill, is the wait
    # a trickle waits for nothing: TTFT is the prefill, TPOT one request's step
    alone = roof.open_loop(1e-6)
    assert alone["ttft_ms"] == pytest.approx(t_p * 1e3, rel=1e-4)
    assert alone["tpot_ms"] == pytest.approx(step(1) * 1e3)
    # TTFT grows with the rate, and past what the slots serve there is no steady state
    rates = [f * 2 / e2e_full for f in (0.2, 0.5, 0.8, 0.95)]
    ttfts = [roof.open_loop(r)["ttft_ms"] for r in rates]
    assert ttfts == sorted(ttfts) and len(set(ttfts)) == 4
    assert roof.open_loop(2 / e2e_full) is None


@pytest.mark.parametrize("interconnect", ["nvlink", "pcie"])
def test_all_reduce_pays_the_interconnects_hop_latency_and_link_rate(interconnect):
    # tp 4: 2 all-reduces x 4 layers, each 3 ring hops of the interconnect's latency, plus
    # 2 x 3/4 x 256 x 2 B per token at 70 % of the link (NVLink 450, PCIe Gen4 31.5 GB/s).
    link = {"nvlink": 450.0, "pcie": 31.5}[interconnect]
    acc = gpu(interconnect=interconnect).model_copy(update={"interconnect_gbps": link})
    spec = toy()
    inp = latency_inputs(spec, resolve_dtypes(spec, "auto", "auto"), acc, "vllm", 4, 900, 10, 8)
    roof = Roofline(inp, default_efficiency("vllm", interconnect))
    hops = 2 * 4 * 3 * ALLREDUCE_LATENCY_MS[interconnect] / 1e3
    per_token = 2 * 4 * 2 * (3 / 4) * 256 * 2 / (link * 1e9 * ALLREDUCE_BUS_EFFICIENCY)
    assert roof.step_terms(8)[3] == pytest.approx(hops + 8 * per_token)


def test_pcie_all_reduce_costs_more_than_nvlink_per_hop_and_per_byte():
    assert ALLREDUCE_LATENCY_MS["pcie"] > ALLREDUCE_LATENCY_MS["nvlink"]
    costs = {}
    for interconnect, link in (("nvlink", 450.0), ("pcie", 31.5)):
        acc = gpu(interconnect=interconnect).model_copy(update={"interconnect_gbps": link})
        spec = toy()
        inp = latency_inputs(spec, resolve_dtypes(spec, "auto", "auto"), acc, "vllm", 4, 900,
                             10, 8)
        costs[interconnect] = Roofline(inp, default_efficiency("vllm", interconnect)
                                       ).predict(8).terms_ms["decode_allreduce"]
    assert costs["pcie"] > 2 * costs["nvlink"]


def test_random_arrivals_are_out_of_step_whatever_the_engine():
    # Poisson arrivals do not come in bunches: an in-step engine family predicts the same
    # open-loop latency as an out-of-step one.
    in_step, out = Roofline(inputs(max_batch=4), IN_STEP), Roofline(inputs(max_batch=4), EFF)
    rate = 0.5 * 4 / out.solve(4)[0]
    assert in_step.open_loop(rate) == out.open_loop(rate)
