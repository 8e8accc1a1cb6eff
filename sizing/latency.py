"""Predicted TTFT, TPOT, E2E and output tokens/s of one model copy, from the roofline of its GPUs.

The model (formulas as the report prints them; B = concurrent requests on the copy, S = input
tokens, M = output tokens, L = S + M/2 the average context while decoding, t = tensor-parallel
degree, BW = memory bandwidth, P = dense tensor peak for the compute dtype, N = batch slots):

  decode step(b) = max(bytes(b) / (BW x eta_mem), flops(b) / (P x eta_compute))
                   + 2 x layers x allreduce(b tokens) + step_overhead
    bytes(b)  = weights read per GPU (all but the input embedding; MoE: the experts b tokens
                touch, E x (1 - (1 - k/E)^b)) + b x KV bytes of an L-token context per GPU
    flops(b)  = b x 2 x active parameters / t + b x 4 x layers x q_dim x L / t
    allreduce(n) = (t-1) x hop latency + 2 (t-1)/t x n x hidden x 2 bytes / link bandwidth
  prefill(S) = max(flops / (P x eta_compute), chunks x weights / (BW x eta_mem))
               + 2 x layers x allreduce(S) + chunks x step_overhead, chunks = ceil(S / budget)
    flops = S x 2 x active parameters / t + 2 x layers x S x min(S, window) x q_dim / t
  Closed-loop concurrency (B clients, each sends its next request when one ends), at most N
  of them in the engine (N = min(engine's max_num_seqs, what the KV cache holds)): with
  b = min(B, N) running, the other b - 1 requests' prefills take rho_o of the copy's time.
  Out of step (sync 0: in-flight batching mixes prefill chunks into decode steps, or request
  lengths vary), they land at random: a new request waits rho_o x prefill / (2 (1 - rho_o))
  (M/D/1) and every decode step is stretched by 1 / (1 - rho_o). In step (sync 1: fixed-length
  clients on a prefill-first engine start and finish together), each cycle's b prefills run
  in one bunch while decodes wait: a request waits (b - 1)/2 prefills for its first token and
  (b - 1)/2 more for its second, and the steps between bunches are not stretched.
  The B - N clients without a slot wait (B/N - 1) x E2E_N for one.
  TTFT = request_overhead + slot wait + prefill wait + prefill(S);
  TPOT = step(b_decoding) / (1 - (1 - sync) x rho_o);
  E2E = TTFT + (M - 1) x TPOT + sync x (b - 1)/2 x prefill;  output tokens/s = b x M / E2E_b.
  A static batch (an offline harness, `served` false): the B prompts prefilled together, then
  B decode to the end: TTFT = prefill(B x S), TPOT = step(B).

Efficiency factors are per engine family (named below, with where each value comes from) and
are what calibration refits per accelerator from measured runs. Pure: numbers in, numbers out.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from lmiflow.sizing.accelerators import Accelerator
from lmiflow.sizing.memory import (
    DTYPE_BYTES,
    MAX_BATCHED_TOKENS,
    DTypeChoice,
    kv_bytes_per_token,
    weight_bytes,
)
from lmiflow.sizing.model_spec import ModelSpec
from pydantic import BaseModel, Field


class Efficiency(BaseModel):
    """How close an engine gets to the datasheet on one accelerator, plus its fixed costs."""

    memory: float = Field(gt=0, le=1, description="Fraction of memory bandwidth a decode "
                                                  "step reaches (eta_mem).")
    compute: float = Field(gt=0, le=1, description="Fraction of dense tensor peak the GEMMs "
                                                   "reach (eta_compute, MFU).")
    step_overhead_ms: float = Field(ge=0, description="Per engine step: scheduling, sampling, "
                                                      "launch gaps.")
    request_overhead_ms: float = Field(ge=0, description="Per request, fixed: HTTP, "
                                       "tokenize, schedule, detokenize, the first step's "
                                       "launch.")
    allreduce_latency_ms: float = Field(ge=0, description="Fixed cost of one tensor-parallel "
                                        "all-reduce call per ring hop (a call at tp t costs "
                                        "t - 1 hops).")
    sync: float = Field(default=0.0, ge=0, le=1, description="Share of closed-loop clients "
                        "whose prefills queue in step (0: random phases, M/D/1 wait).")


# Starting values per engine family, set before any published point was fitted: eta_mem and
# eta_compute inside the ranges public numbers show (REFERENCE.md "Latency": eta_mem 0.55-0.85
# for vLLM/TensorRT-LLM decode, prefill MFU 0.35-0.65); step and request costs assumed (a
# Python scheduler in vLLM, C++ in TensorRT-LLM and LMDeploy's TurboMind). They are the prior
# a fit pulls toward: perf/latency_cv.py fits each held-out fold from these, never from the
# fitted defaults below (which saw every source).
# `sync` is structural, not fitted: whether closed-loop clients with fixed lengths stay in
# step. An engine whose steps run new prompts' prefills while running decodes wait (vLLM's V0
# engine without chunked prefill, SGLang's default scheduler, TurboMind: LlamaV2.cc runs
# batch_.contextDecode() on new requests before the batch's generate() steps) keeps them in
# step (1: each request waits for the prefills queued ahead of it, and a decode step is not
# stretched between the bunches). An engine that mixes prefill chunks into decode steps
# (TensorRT-LLM's in-flight batcher, vLLM's V1 engine: LatencyInputs.mixed_prefill) lets
# early requests run ahead, and the clients drift out of step (0: M/D/1 wait); NIM 70B TTFT
# at 25 clients is only 1.7x that at 1.
ENGINE_PRIORS: dict[str, dict[str, float]] = {
    "vllm": {"memory": 0.75, "compute": 0.5, "step_overhead_ms": 1.0,
             "request_overhead_ms": 40.0, "sync": 1.0},
    "sglang": {"memory": 0.75, "compute": 0.5, "step_overhead_ms": 0.5,
               "request_overhead_ms": 20.0, "sync": 1.0},
    "trtllm": {"memory": 0.8, "compute": 0.5, "step_overhead_ms": 0.5,
               "request_overhead_ms": 10.0, "sync": 0.0},
    # LMDeploy's TurboMind: a C++ batching engine; TensorRT-LLM's starting values (a family of
    # its own so that its published runs do not move TensorRT-LLM's factors).
    "lmdeploy": {"memory": 0.8, "compute": 0.5, "step_overhead_ms": 0.5,
                 "request_overhead_ms": 10.0, "sync": 1.0},
    # lmiflow's own transformers server (the local target): eager PyTorch, no CUDA graphs, a
    # Python generate loop; a guess for the first calibrated local run to replace.
    "local": {"memory": 0.5, "compute": 0.3, "step_overhead_ms": 15.0,
              "request_overhead_ms": 10.0, "sync": 1.0},
}
# Defaults, uncalibrated: the factors fitted on every published source, from the priors above
# (`.venv/bin/python perf/latency_cv.py` prints them under "Factors fitted on every source";
# tests/sizing/test_latency_cv.py checks these are what the fit gives, rounded). Fitted on 118
# runs from 15 sources (tests/sizing/published/, 2026-12-04). The local engine has no
# published runs: its priors stand. `lmiflow calibrate` refits per accelerator and engine
# from benchmark records.
FITTED: dict[str, dict[str, float]] = {
    "vllm": {"memory": 0.92, "compute": 0.58, "step_overhead_ms": 1.9,
             "request_overhead_ms": 49.0},
    "sglang": {"memory": 0.84, "compute": 0.66, "step_overhead_ms": 1.5,
               "request_overhead_ms": 27.0},
    "trtllm": {"memory": 0.86, "compute": 0.52, "step_overhead_ms": 4.7,
               "request_overhead_ms": 13.0},
    "lmdeploy": {"memory": 0.74, "compute": 0.47, "step_overhead_ms": 0.93,
                 "request_overhead_ms": 14.0},
}
ENGINE_EFFICIENCY: dict[str, dict[str, float]] = {
    engine: {**prior, **FITTED.get(engine, {})} for engine, prior in ENGINE_PRIORS.items()}
# What an engine admits, per model copy, when nothing else caps it: vLLM's max_num_seqs
# default (256), TensorRT-LLM's max_batch_size as LMI builds it (256); and the prefill tokens
# one scheduler step takes (vLLM max_num_batched_tokens / TensorRT-LLM max_num_tokens, the
# 8,192 lmiflow renders into serving.properties), so a longer prompt is chunked.
ENGINE_LIMITS: dict[str, dict[str, int]] = {
    "vllm": {"max_batch": 256, "prefill_tokens": MAX_BATCHED_TOKENS},
    "sglang": {"max_batch": 256, "prefill_tokens": MAX_BATCHED_TOKENS},
    "trtllm": {"max_batch": 256, "prefill_tokens": MAX_BATCHED_TOKENS},
    "lmdeploy": {"max_batch": 256, "prefill_tokens": MAX_BATCHED_TOKENS},
    "local": {"max_batch": 32, "prefill_tokens": MAX_BATCHED_TOKENS},
}
# All-reduce time per call per ring hop, by interconnect. A ring all-reduce of a small message
# takes 2 (t - 1) latency-bound steps; nccl-tests all_reduce_perf on 8 x H100 NVLink shows
# ~15-25 us for a few KB, PCIe several times that. Measured decode of a 70B fp8 model: tp 8
# barely beats tp 4 (14.3 vs 15.9 ms per step), which a per-call cost that grows with t
# explains and a fixed one does not. Large messages run at the link rate times the bus
# efficiency nccl-tests reports for ring all-reduce (its "busbw", 70-80 % of the link).
ALLREDUCE_LATENCY_MS = {"nvlink": 0.01, "pcie": 0.03, "neuronlink": 0.01}
ALLREDUCE_BUS_EFFICIENCY = 0.7
# Prefills never take more than this share of a copy's time: beyond it the copy is saturated
# and queues grow without bound; predictions say so instead of dividing by ~0.
MAX_PREFILL_SHARE = 0.95
ACTIVATION_BYTES = 2  # all-reduce payloads are 16-bit activations
# Latency percentiles the model predicts: the median and TTFT's tail (the wait for a slot and
# for other prefills is what spreads TTFT; TPOT and E2E are predicted as medians only).
TTFT_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
MEDIAN_STATS = ("p50", "mean", "median")


def default_efficiency(engine: str, interconnect: str, prior: bool = False) -> Efficiency:
    """The engine's uncalibrated factors on this interconnect (prior: its starting values)."""
    per_hop = ALLREDUCE_LATENCY_MS.get(interconnect, ALLREDUCE_LATENCY_MS["pcie"])
    table = ENGINE_PRIORS if prior else ENGINE_EFFICIENCY
    return Efficiency(**table[engine], allreduce_latency_ms=per_hop)


def predicted_stats(metric: str) -> tuple[str, ...]:
    """The statistics of a metric the model predicts (a gate on another one is refused)."""
    return tuple(TTFT_QUANTILES) + MEDIAN_STATS[1:] if metric == "ttft_ms" else MEDIAN_STATS


class LatencyInputs(BaseModel):
    """Everything a prediction needs, as plain numbers: a calibration record stores it so a fit
    can re-run the prediction with other efficiency factors."""

    accelerator: str
    engine: str
    tp: int
    bandwidth_gbps: float
    peak_tflops: float
    interconnect: str
    link_gbps: float | None
    layers: int
    hidden: int
    q_dim: int
    dense_bytes_per_gpu: float = Field(description="Weights every decode step reads per GPU "
                                                   "(MoE: all but the routed experts).")
    expert_bytes_per_gpu: float = 0.0
    num_experts: int = 0
    experts_per_token: int = 0
    flops_per_token: float = Field(description="2 x active parameters (input embedding "
                                               "excluded), whole model.")
    kv_bytes_per_token_layer_gpu: float = Field(description="KV bytes one token holds in one "
                                                            "layer on one GPU.")
    window_layers: int = Field(default=0, description="Layers whose attention (and KV) is "
                                                      "capped by `window` tokens.")
    window: int | None = None
    input_tokens: int
    output_tokens: int
    concurrency: int = Field(ge=1, description="Concurrent requests on this model copy.")
    max_batch: int | None = Field(default=None, ge=1, description="Batch slots per copy "
                                  "(max_rolling_batch_size, or what the KV cache holds); "
                                  "empty: the engine's default max_num_seqs.")
    served: bool = Field(default=True, description="Behind an HTTP server (false: an offline "
                         "harness such as gptSessionBenchmark or vLLM's benchmark_latency: one "
                         "static batch of `concurrency` requests, no per-request cost).")
    mixed_prefill: bool | None = Field(default=None, description="Prefill chunks share steps "
                                       "with running decodes (vLLM's V1 engine): closed-loop "
                                       "clients drift out of step (sync 0). False: prefill-"
                                       "first steps keep them in step (sync 1). Empty: the "
                                       "engine family's `sync`.")
    lengths_vary: bool = Field(default=False, description="Request lengths vary around the "
                               "planned ones (a dataset's prompts, sampled outputs): requests "
                               "finish apart, so clients drift out of step whatever the "
                               "scheduler (sync 0). False: fixed lengths, as lmiflow bench "
                               "sends.")


class Prediction(BaseModel):
    ttft_ms: float
    tpot_ms: float
    e2e_ms: float
    output_tokens_per_s: float = Field(description="This copy at its concurrency.")
    bound: str = Field(description="memory or compute: what limits a decode step.")
    saturated: bool = Field(description="Prefills alone use the copy's time: the prediction is "
                                        "a floor, queues grow.")
    slots: int = Field(default=0, description="Requests the engine runs at once on the copy.")
    queued: int = Field(default=0, description="Requests waiting for a batch slot.")
    ttft_tail_ms: dict[str, float] = Field(default_factory=dict, description="TTFT at p50, "
                                           "p90, p95, p99.")
    terms_ms: dict[str, float] = Field(default_factory=dict)


def compute_dtype(dtypes: DTypeChoice, acc: Accelerator) -> str:
    """fp8 weights run fp8 GEMMs where the GPU has fp8 tensor cores, else (Ampere: weight-only
    Marlin kernels) 16-bit GEMMs; int8/int4 checkpoints are weight-only too."""
    if dtypes.weights == "fp8" and acc.supports_fp8:
        return "fp8"
    if dtypes.activations == "bf16" and acc.supports_bf16:
        return "bf16"
    return "fp16"


def latency_inputs(spec: ModelSpec, dtypes: DTypeChoice, acc: Accelerator, engine: str, tp: int,
                   input_tokens: int, output_tokens: int, concurrency: int,
                   total_weight_bytes: int | None = None, max_batch: int | None = None
                   ) -> LatencyInputs:
    wbytes = total_weight_bytes if total_weight_bytes is not None else weight_bytes(
        spec, dtypes.weights)
    embed_params = spec.vocab_size * spec.hidden_size
    # The input embedding is a lookup (b rows read), the output head a full GEMV: an untied
    # model skips one vocab x hidden matrix per step; a tied one reads it once, as the head.
    untied_embed = 0 if spec.tie_word_embeddings else embed_params
    embed_bytes = untied_embed * max(DTYPE_BYTES[dtypes.weights], 2.0)
    read_bytes = max(wbytes - embed_bytes, 0.0)
    expert_bytes = 0.0
    if spec.is_moe and spec.num_experts > spec.experts_per_token:
        routed_params = ((spec.parameters - spec.active_parameters) * spec.num_experts
                         / (spec.num_experts - spec.experts_per_token))
        expert_bytes = read_bytes * routed_params / max(spec.parameters - untied_embed, 1)
    windowed = spec.sliding_window_layers if spec.sliding_window else 0
    return LatencyInputs(
        accelerator=acc.name, engine=engine, tp=tp,
        bandwidth_gbps=acc.memory_bandwidth_gbps,
        peak_tflops=acc.peak_tflops(compute_dtype(dtypes, acc)),
        interconnect=acc.interconnect, link_gbps=acc.interconnect_gbps,
        layers=spec.num_layers, hidden=spec.hidden_size,
        q_dim=spec.num_attention_heads * spec.head_dim,
        dense_bytes_per_gpu=(read_bytes - expert_bytes) / tp,
        expert_bytes_per_gpu=expert_bytes / tp,
        num_experts=spec.num_experts, experts_per_token=spec.experts_per_token,
        flops_per_token=2.0 * max(spec.active_parameters - untied_embed, 0),
        kv_bytes_per_token_layer_gpu=kv_bytes_per_token(spec, dtypes.kv_cache, tp)
        / spec.num_layers,
        window_layers=windowed, window=spec.sliding_window if windowed else None,
        input_tokens=input_tokens, output_tokens=output_tokens, concurrency=concurrency,
        max_batch=max_batch,
    )


def _touched_experts(inp: LatencyInputs, tokens: float) -> float:
    """Share of routed expert weights `tokens` tokens read (each picks k of E at random)."""
    if not inp.num_experts:
        return 0.0
    k, e = inp.experts_per_token, inp.num_experts
    return 1.0 - (1.0 - k / e) ** max(tokens, 0.0)


def _attended(inp: LatencyInputs, context: float) -> float:
    """Tokens all layers together attend to (and hold KV for) at this context, in layer-tokens."""
    held = min(context, inp.window) if inp.window else context
    return (inp.layers - inp.window_layers) * context + inp.window_layers * held


def engine_limits(engine: str) -> dict[str, int]:
    return ENGINE_LIMITS.get(engine, ENGINE_LIMITS["vllm"])


def _random_wait_quantile(mean: float, rho: float, q: float) -> float:
    """Quantile q of an M/D/1-like wait with this mean: P(W > t) = rho exp(-rho t / mean)
    (waits with probability rho, exponential tail; the mean matches the Pollaczek-Khinchine
    mean the model uses)."""
    if mean <= 0 or rho <= 0 or 1 - q >= rho:
        return 0.0
    return mean / rho * math.log(rho / (1 - q))


class _State(NamedTuple):
    """One load on a copy, in seconds: what latency_ms and predict report."""

    ttft: float
    tpot: float
    e2e: float
    wait: float  # for other prefills
    slot_wait: float
    decoding: float
    saturated: bool
    running: int
    tail: dict[str, float]  # TTFT percentiles, ms


class Roofline:
    """The model's constants for one copy and one set of factors, in seconds and bytes, so that
    stepping through concurrencies (a planner's search, a fit) costs a few multiplications."""

    def __init__(self, inp: LatencyInputs, eff: Efficiency):
        self.inp, self.eff = inp, eff
        self.bw = inp.bandwidth_gbps * 1e9 * eff.memory
        self.peak = inp.peak_tflops * 1e12 * eff.compute
        limits = engine_limits(inp.engine)
        self.slots = inp.max_batch or limits["max_batch"]
        self.budget = limits["prefill_tokens"]
        ctx = inp.input_tokens + inp.output_tokens / 2
        attended = _attended(inp, ctx)
        self.kv_per_seq = inp.kv_bytes_per_token_layer_gpu * attended
        self.flops_per_seq = (inp.flops_per_token + 4 * inp.q_dim * attended) / inp.tp
        t = inp.tp
        if t > 1:
            # Two all-reduces per layer (after attention, after the MLP) of tokens x hidden,
            # each t - 1 ring hops of fixed latency plus the bytes at the bus rate.
            bus = (inp.link_gbps or 1.0) * 1e9 * ALLREDUCE_BUS_EFFICIENCY
            self.ar_fixed = 2 * inp.layers * (t - 1) * eff.allreduce_latency_ms / 1e3
            self.ar_per_token = (2 * inp.layers * 2 * (t - 1) / t * inp.hidden
                                 * ACTIVATION_BYTES / bus)
        else:
            self.ar_fixed = self.ar_per_token = 0.0
        self.overhead = eff.step_overhead_ms / 1e3
        self.request = eff.request_overhead_ms / 1e3 if inp.served else 0.0
        if inp.lengths_vary:
            self.sync = 0.0
        else:
            self.sync = eff.sync if inp.mixed_prefill is None else float(not inp.mixed_prefill)
        self.prefill = self._prefill()

    def _prefill(self, prompts: int = 1) -> float:
        """Prefill of `prompts` prompts of S tokens run together (one, unless a static batch)."""
        inp = self.inp
        s = inp.input_tokens
        # Causal attention: QK^T and AV over on average half the prompt, 2 x 2 x s^2/2 x q_dim.
        flops = prompts * (s * inp.flops_per_token
                           + 2 * inp.q_dim * s * _attended(inp, s)) / inp.tp
        # Chunked prefill: a prompt longer than the step's token budget takes several steps,
        # each reading the weights and paying the step overhead.
        chunks = math.ceil(prompts * s / self.budget)
        weights = inp.dense_bytes_per_gpu + inp.expert_bytes_per_gpu * _touched_experts(
            inp, min(prompts * s, self.budget))
        return (max(flops / self.peak, chunks * weights / self.bw)
                + self.ar_fixed * chunks + self.ar_per_token * prompts * s
                + chunks * self.overhead)

    def step_terms(self, batch: float) -> tuple[float, float, float, float, float]:
        """Decode step of `batch` sequences: weights, KV, compute, all-reduce, overhead (s)."""
        inp = self.inp
        weights = inp.dense_bytes_per_gpu
        if inp.num_experts:
            weights += inp.expert_bytes_per_gpu * _touched_experts(inp, batch)
        return (weights / self.bw, batch * self.kv_per_seq / self.bw,
                batch * self.flops_per_seq / self.peak,
                self.ar_fixed + self.ar_per_token * batch, self.overhead)

    def step(self, batch: float) -> float:
        w, kv, comp, ar, ovh = self.step_terms(batch)
        return max(w + kv, comp) + ar + ovh

    def waits(self, b: int, x: float) -> tuple[float, float, float]:
        """(mean prefill wait, its out-of-step part, rho_o) for b running requests whose
        E2E is x."""
        t_p, sync = self.prefill, self.sync
        rho_o = min((b - 1) * t_p / x, MAX_PREFILL_SHARE)
        random = rho_o * t_p / (2 * (1 - rho_o))
        in_step = (b - 1) / 2 * t_p
        return (1 - sync) * random + sync * in_step, random, rho_o

    def cycle(self, b: int, x: float) -> tuple[float, float, float, float]:
        """Assuming each request's E2E is x: (implied E2E, TPOT, wait, decoding requests)."""
        m, t_p, sync = self.inp.output_tokens, self.prefill, self.sync
        wait, _, rho_o = self.waits(b, x)
        # Out of step, requests still in their prefill (or queued for it) are not decoding and
        # the others' prefills, spread over the cycle, stretch every step. In step, the
        # prefills come in one bunch per cycle, while decodes wait: the steps between bunches
        # run all b requests unstretched, and the bunch adds (b - 1)/2 prefills to each
        # request's decode (once per request, spread over its M - 1 tokens).
        spread = max(b * (1 - (t_p + wait) / x), 1.0) if m > 1 else 1.0
        decoding = sync * b + (1 - sync) * spread if m > 1 else 1.0
        tpot = self.step(decoding) / (1 - (1 - sync) * rho_o)
        bunch = sync * (b - 1) / 2 * t_p
        e2e = self.request + wait + t_p + (m - 1) * tpot + (bunch if m > 1 else 0.0)
        return e2e, tpot, wait, decoding

    def solve(self, b: int) -> tuple[float, float, float, float, bool]:
        """(E2E, TPOT, wait, decoding, saturated) of b closed-loop requests running: the cycle
        length x where assumed and implied E2E agree. x - implied(x) < 0 where the others'
        prefills nearly fill the copy and > 0 for a long enough cycle, so bisection finds
        the root."""
        if b == 1:
            e2e, tpot, wait, dec = self.cycle(1, math.inf)
            return e2e, tpot, wait, dec, False
        lo = (b - 1) * self.prefill / MAX_PREFILL_SHARE
        at_lo = self.cycle(b, lo)
        if lo >= at_lo[0]:
            return (*at_lo, True)
        hi = max(self.cycle(b, math.inf)[0], lo) * 2
        while hi < self.cycle(b, hi)[0]:
            hi *= 2
        while hi - lo > 1e-3 * hi:
            mid = (lo + hi) / 2
            if mid < self.cycle(b, mid)[0]:
                lo = mid
            else:
                hi = mid
        return (*self.cycle(b, hi), False)

    def _closed_loop(self, b: int) -> _State:
        """b clients: at most `slots` run; the others wait for a slot, each of the running ones
        freeing one every E2E of theirs (closed loop: a client's cycle is b / n running E2Es)."""
        if not self.inp.served:
            return self._static(b)
        n = min(b, self.slots)
        e2e, tpot, wait, decoding, saturated = self.solve(n)
        slot_wait = (b / n - 1) * e2e
        ttft = self.request + slot_wait + wait + self.prefill
        return _State(ttft, tpot, e2e + slot_wait, wait, slot_wait, decoding, saturated, n,
                      self._ttft_tail(n, e2e, slot_wait))

    def _static(self, b: int) -> _State:
        """One static batch of b requests (an offline harness: gptSessionBenchmark, vLLM's
        benchmark_latency): the harness sized its batch to b, every prompt is prefilled before
        the first token and all b decode together to the end; no prefill stalls a step."""
        ttft = self._prefill(b) if b > 1 else self.prefill
        tpot = self.step(b)
        tail = {stat: ttft * 1e3 for stat in TTFT_QUANTILES}
        return _State(ttft, tpot, ttft + (self.inp.output_tokens - 1) * tpot,
                      ttft - self.prefill, 0.0, float(b), False, b, tail)

    def latency_ms(self, b: int) -> dict[str, float]:
        """TTFT (mean and tail), TPOT, E2E at b requests on the copy (what limits are checked
        against)."""
        st = self._closed_loop(b)
        return {"ttft_ms": st.ttft * 1e3, "tpot_ms": st.tpot * 1e3, "e2e_ms": st.e2e * 1e3,
                **{f"ttft_ms@{k}": v for k, v in st.tail.items()}}

    def _ttft_tail(self, n: int, e2e: float, slot_wait: float) -> dict[str, float]:
        """TTFT percentiles (ms): out of step, the M/D/1 wait's exponential tail; in step, the
        k-th of n prefills (uniform over 0 .. n - 1 prefills). p50 is the mean the model
        predicts. The slot wait of a closed loop is the same for every request."""
        mean, random, rho_o = self.waits(n, e2e)
        base = self.request + slot_wait + self.prefill
        out = {"p50": (base + mean) * 1e3}
        for stat, q in TTFT_QUANTILES.items():
            if stat != "p50":
                w = ((1 - self.sync) * _random_wait_quantile(random, rho_o, q)
                     + self.sync * q * (n - 1) * self.prefill)
                out[stat] = (base + max(w, mean)) * 1e3
        return out

    def predict(self, b: int) -> Prediction:
        """Steady state of b closed-loop clients on the copy, with the terms behind it."""
        st = self._closed_loop(b)
        w, kv, comp, ar, ovh = self.step_terms(st.decoding)
        return Prediction(
            ttft_ms=st.ttft * 1e3, tpot_ms=st.tpot * 1e3, e2e_ms=st.e2e * 1e3,
            output_tokens_per_s=b * self.inp.output_tokens / st.e2e,
            bound="memory" if w + kv >= comp else "compute", saturated=st.saturated,
            slots=st.running, queued=b - st.running, ttft_tail_ms=st.tail,
            terms_ms={"decode_weights": w * 1e3, "decode_kv_cache": kv * 1e3,
                      "decode_compute": comp * 1e3, "decode_allreduce": ar * 1e3,
                      "step_overhead": ovh * 1e3, "prefill": self.prefill * 1e3,
                      "queue_wait": st.wait * 1e3, "slot_wait": st.slot_wait * 1e3,
                      "request_overhead": self.request * 1e3})

    def open_loop(self, rate_per_s: float) -> dict[str, float] | None:
        """Mean TTFT, TPOT, E2E (ms) under Poisson arrivals at `rate_per_s` on the copy; None
        when the copy cannot keep up (queues grow without bound). Requests in service n solve
        n = rate x E2E(n) (Little's law); with n near the slots, a request waits for one as
        in an M/M/c queue (Erlang C, c = slots, service time E2E at full slots). Random
        arrivals are out of step whatever the engine: the cycles are solved with sync 0."""
        if self.sync:  # (mixed_prefill True puts the copy out of step)
            return Roofline(self.inp.model_copy(update={"mixed_prefill": True}),
                            self.eff).open_loop(rate_per_s)
        lo, hi = 1, self.slots
        e2e_full = self.solve(self.slots)[0]
        if rate_per_s * e2e_full >= self.slots:
            return None
        while hi - lo > 1:  # smallest n with rate x E2E(n) <= n
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if rate_per_s * self.solve(mid)[0] <= mid else (mid, hi)
        n = lo if rate_per_s * self.solve(lo)[0] <= lo else hi
        tpot = self.solve(n)[1]
        # Pollaczek-Khinchine for the prefill queue: arrivals are random here (sync = 0).
        rho = min(rate_per_s * self.prefill, MAX_PREFILL_SHARE)
        wait = rho * self.prefill / (2 * (1 - rho))
        slot_wait = _erlang_c(self.slots, rate_per_s * e2e_full) * e2e_full / (
            self.slots - rate_per_s * e2e_full)
        ttft = self.request + wait + self.prefill + slot_wait
        return {"ttft_ms": ttft * 1e3, "tpot_ms": tpot * 1e3,
                "e2e_ms": (ttft + (self.inp.output_tokens - 1) * tpot) * 1e3}


def _erlang_c(c: int, a: float) -> float:
    """Probability an arrival waits in an M/M/c queue with offered load a (< c)."""
    inv_b = 1.0  # 1 / Erlang B, by the stable recurrence
    for k in range(1, c + 1):
        inv_b = 1.0 + inv_b * k / a if a > 0 else math.inf
    if math.isinf(inv_b):
        return 0.0
    b = 1.0 / inv_b
    return b / (1 - (a / c) * (1 - b))


def predict(inp: LatencyInputs, eff: Efficiency) -> Prediction:
    """Steady state of the inputs' B closed-loop clients on one copy (module docstring)."""
    return Roofline(inp, eff).predict(inp.concurrency)


# How far a measurement falls from the prediction: measured / predicted at the 10th and 90th
# percentiles of the published points, cross-validated by source (uncalibrated: each source
# predicted with factors fitted on the others) and held out from a family's calibration on 3
# of its runs (calibrated). `.venv/bin/python perf/latency_cv.py` prints both ("Error bands");
# tests/sizing/test_latency_cv.py recomputes them and fails when these drift from the data.
# The planner shows [prediction x low, prediction x high] as the likely range and checks a
# gate at its upper end. (On these families calibration narrows TPOT's band but not TTFT's:
# it is used as computed.)
ERROR_BAND: dict[str, dict[str, tuple[float, float]]] = {
    "ttft_ms": {"uncalibrated": (0.72, 1.41), "calibrated": (0.56, 1.66)},
    "tpot_ms": {"uncalibrated": (0.93, 1.36), "calibrated": (0.90, 1.09)},
}
