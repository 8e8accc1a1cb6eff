"""The latency model's terms worked out by hand on the toy model and GPU of
test_planner_latency_boundaries (20,460,800 B per single-request decode step read at
20.4608 GB/s = 1 ms; factors 1.0, a 1 ms step overhead): mixture-of-experts reads, sliding-window
attention, compute-bound steps, tensor-parallel all-reduces, and the closed-loop queue.
"""

import math

import pytest
from lmiflow.sizing.latency import (
    ALLREDUCE_BUS_EFFICIENCY,
    Roofline,
    default_efficiency,
    latency_inputs,
)
from lmiflow.sizing.memory import resolve_dtypes

from tests.sizing.test_plan_boundaries import toy
from tests.sizing.test_planner_latency_boundaries import BW, EFF, W, gpu

KV_PER_TOKEN = 1024  # all 4 layers, one GPU at tp 1
UNTIED_EMBED = 1000 * 256  # parameters of the input embedding, which a step does not read


def inputs(spec, tp=1, s=900, m=100, b=1, acc=None):
    return latency_inputs(spec, resolve_dtypes(spec, "auto", "auto"), acc or gpu(), "vllm", tp,
                          s, m, b)


def moe(experts=4, per_token=1):
    # 10 M parameters, 4 M active: 6 M in the experts a token skips, so E x 2 M routed.
    return toy().model_copy(update={"num_experts": experts, "experts_per_token": per_token,
                                    "active_parameters": 4_000_000})


def test_dense_inputs_have_no_experts_and_no_window():
    inp = inputs(toy())
    assert (inp.expert_bytes_per_gpu, inp.num_experts, inp.window_layers, inp.window) == (
        0.0, 0, 0, None)
    assert inp.dense_bytes_per_gpu == W
    assert inp.flops_per_token == 2 * (10_000_000 - UNTIED_EMBED)


def test_moe_splits_the_weights_into_dense_and_routed_expert_bytes():
    # Routed experts: 4 x 2 M = 8 M of the 9,744,000 parameters a step can read, at 2 B each.
    inp = inputs(moe(), tp=2)
    assert inp.expert_bytes_per_gpu == pytest.approx(8_000_000 * 2 / 2)
    assert inp.dense_bytes_per_gpu == pytest.approx((W - 16_000_000) / 2)
    assert inp.flops_per_token == 2 * (4_000_000 - UNTIED_EMBED)


def test_a_moe_whose_tokens_use_every_expert_reads_everything_every_step():
    inp = inputs(moe(experts=2, per_token=2))
    assert inp.expert_bytes_per_gpu == 0.0 and inp.dense_bytes_per_gpu == W


def test_moe_decode_reads_the_dense_part_and_the_experts_its_tokens_touch():
    # One token touches 1 of 4 experts: 1 - (3/4)^1 = 25 % of 16 MB; three touch 1 - (3/4)^3.
    roof = Roofline(inputs(moe()), EFF)
    for b in (1, 3):
        touched = 1 - 0.75 ** b
        assert roof.step_terms(b)[0] == pytest.approx((3_488_000 + 16_000_000 * touched) / BW)


def test_sliding_window_layers_hold_at_most_the_window():
    # 2 of 4 layers see only the last 100 tokens: a 950-token average context holds
    # 2 x 950 + 2 x 100 layer-tokens of 256 B each.
    windowed = toy().model_copy(update={"sliding_window": 100, "sliding_window_layers": 2})
    inp = inputs(windowed)
    assert (inp.window_layers, inp.window) == (2, 100)
    roof = Roofline(inp, EFF)
    assert roof.step_terms(1)[1] == pytest.approx(256 * (2 * 950 + 2 * 100) / BW)


def test_a_compute_bound_step_is_flops_over_peak():
    # At 1 TFLOP/s x 0.001 a sequence's 2 x 9,744,000 + 4 x 256 x 3,800 FLOP take 23.4 ms,
    # far over the 1 ms of reads.
    slow = gpu().model_copy(update={"fp16_tflops": 0.001, "bf16_tflops": 0.001})
    roof = Roofline(inputs(toy(), acc=slow), EFF)
    flops = 2 * (10_000_000 - UNTIED_EMBED) + 4 * 256 * 4 * 950
    assert roof.step_terms(2)[2] == pytest.approx(2 * flops / 1e9)
    p = roof.predict(1)
    assert p.bound == "compute"
    assert p.tpot_ms == pytest.approx(flops / 1e9 * 1e3 + 1.0)


def test_tensor_parallel_step_pays_two_all_reduces_per_layer():
    # tp 2 over a 100 GB/s link at 70 % bus efficiency: each of the 2 x 4 all-reduces costs
    # 0.01 ms plus 2 x (1/2) x 256 x 2 B per token.
    eff = EFF.model_copy(update={"allreduce_latency_ms": 0.01})
    roof = Roofline(inputs(toy(), tp=2), eff)
    per_token = 2 * 4 * 2 * (1 / 2) * 256 * 2 / (100e9 * ALLREDUCE_BUS_EFFICIENCY)
    assert roof.step_terms(3)[3] == pytest.approx(2 * 4 * 0.01e-3 + 3 * per_token)


def test_an_unknown_interconnect_gets_the_pcie_all_reduce_latency():
    assert default_efficiency("vllm", "infiniband").allreduce_latency_ms == (
        default_efficiency("vllm", "pcie").allreduce_latency_ms)


def closed_loop(roof, b, m, kv_per_seq, request_s):
    """The model's equations, written out: from the reported queue wait w back to the cycle
    x the solver settled on (w = rho t_p / 2(1 - rho), rho = (b - 1) t_p / x), then what TPOT
    and E2E must be at that x."""
    p = roof.predict(b)
    t_p, w = roof.prefill, p.terms_ms["queue_wait"] / 1e3
    rho = 2 * w / (t_p + 2 * w)
    x = (b - 1) * t_p / rho
    decoding = max(b * (1 - (t_p + w) / x), 1.0) if m > 1 else 1.0
    step = (W + decoding * kv_per_seq) / BW + 1e-3
    return p, x, step / (1 - rho), request_s + w + t_p + (m - 1) * step / (1 - rho)


def test_concurrent_requests_settle_where_the_cycle_explains_itself():
    # Ten output tokens make each cycle short (~22 ms) next to a 2 ms prefill, so three other
    # clients' prefills take a visible share of the copy's time.
    roof = Roofline(inputs(toy(), s=900, m=10, b=4), EFF)
    p, x, tpot, e2e = closed_loop(roof, 4, 10, KV_PER_TOKEN * 905, 0.0)
    assert p.terms_ms["queue_wait"] / p.ttft_ms > 0.1  # the queue is part of the answer
    assert p.tpot_ms == pytest.approx(tpot * 1e3, rel=1e-9)
    assert p.e2e_ms == pytest.approx(e2e * 1e3, rel=1e-9)
    assert x == pytest.approx(e2e, rel=2e-3)  # a fixed point, to the solver's tolerance
    assert not p.saturated


def test_one_token_outputs_decode_one_sequence_at_a_time():
    # With a 50 ms request overhead most of each cycle is outside the copy; a TPOT still
    # means one sequence's step, stretched by the others' prefills.
    eff = EFF.model_copy(update={"request_overhead_ms": 50.0})
    roof = Roofline(inputs(toy(), s=900, m=1, b=4), eff)
    p, _, tpot, e2e = closed_loop(roof, 4, 1, KV_PER_TOKEN * 900.5, 0.05)
    assert p.tpot_ms == pytest.approx(tpot * 1e3, rel=1e-9)
    assert p.e2e_ms == pytest.approx(e2e * 1e3, rel=1e-9)
    assert not math.isclose(p.tpot_ms, 2.0, rel_tol=1e-6)  # the wait shows in TPOT too


def test_the_terms_a_report_shows_add_up_to_the_prediction():
    # tp 2: each GPU reads half the weights and holds 1 of the 2 KV heads; 2 x 4 all-reduces
    # of 0.01 ms plus one token's bytes; a 5 ms request overhead before the prefill.
    eff = EFF.model_copy(update={"allreduce_latency_ms": 0.01, "request_overhead_ms": 5.0})
    roof = Roofline(inputs(toy(), tp=2), eff)
    per_token = 2 * 4 * 2 * (1 / 2) * 256 * 2 / (100e9 * ALLREDUCE_BUS_EFFICIENCY)
    ar_fixed = 2 * 4 * 0.01e-3
    flops = 2 * (10_000_000 - UNTIED_EMBED) + 4 * 256 * 4 * 950
    prefill = (W / 2 / BW + ar_fixed + 900 * per_token + 1e-3)  # reads beat 0.1 ms of FLOPs
    assert roof.predict(1).terms_ms == pytest.approx({
        "decode_weights": W / 2 / BW * 1e3, "decode_kv_cache": 512 * 950 / BW * 1e3,
        "decode_compute": flops / 2 / 1e14 * 1e3, "decode_allreduce": (ar_fixed + per_token) * 1e3,
        "step_overhead": 1.0, "prefill": prefill * 1e3, "queue_wait": 0.0, "slot_wait": 0.0,
        "request_overhead": 5.0}, rel=1e-9)


def test_a_step_is_memory_bound_while_reads_take_at_least_as_long_as_the_flops():
    # Reads take 1 ms (0.952 ms weights + 0.048 ms KV); at 24.6 TFLOP/s the FLOPs take 0.95 ms.
    flops = 2 * (10_000_000 - UNTIED_EMBED) + 4 * 256 * 4 * 950
    peak = flops / 0.95e-3 / 1e12
    near = gpu().model_copy(update={"fp16_tflops": peak, "bf16_tflops": peak})
    assert Roofline(inputs(toy(), acc=near), EFF).predict(1).bound == "memory"


@pytest.mark.parametrize(("share", "saturated"), [(0.99, True), (1.01, False)])
def test_saturated_when_a_cycle_at_95_percent_prefill_share_outlasts_a_request(share, saturated):
    # 41 clients, one-token outputs: at 95 % of the copy's time in the other 40 prefills a
    # cycle lasts 40 t_p / 0.95 = 42.1 t_p, while a request needs the overhead r, its own
    # prefill t_p and the M/D/1 wait 0.95 t_p / (2 x 0.05) = 9.5 t_p. Saturated when the
    # cycle is at least that: r <= (42.1 - 10.5) t_p.
    t_p = W / BW + 1e-3
    r = (40 / 0.95 - 10.5) * t_p * share
    eff = EFF.model_copy(update={"request_overhead_ms": r * 1e3})
    p = Roofline(inputs(toy(), m=1, b=41), eff).predict(41)
    assert p.saturated is saturated


def test_all_reduce_bytes_grow_with_the_share_each_gpu_sends():
    # A ring all-reduce over t GPUs moves 2 (t - 1) / t of the message per GPU: 3/2 at tp 4.
    eff = EFF.model_copy(update={"allreduce_latency_ms": 0.0})
    roof = Roofline(inputs(toy(), tp=4), eff)
    per_token = 2 * 4 * 2 * (3 / 4) * 256 * 2 / (100e9 * ALLREDUCE_BUS_EFFICIENCY)
    assert roof.step_terms(1)[3] == pytest.approx(per_token)


def test_a_moe_prefill_reads_every_expert_its_prompt_touches():
    # 900 prompt tokens each pick 1 of 4 experts: all four are read, 19,488,000 B in all.
    assert Roofline(inputs(moe()), EFF).prefill == pytest.approx(W / BW + 1e-3)


def test_two_token_outputs_decode_the_requests_not_in_their_prefill():
    eff = EFF.model_copy(update={"request_overhead_ms": 50.0})
    roof = Roofline(inputs(toy(), s=900, m=2, b=4), eff)
    p, _, tpot, e2e = closed_loop(roof, 4, 2, KV_PER_TOKEN * 901, 0.05)
    assert p.tpot_ms == pytest.approx(tpot * 1e3, rel=1e-9)
    assert p.e2e_ms == pytest.approx(e2e * 1e3, rel=1e-9)
