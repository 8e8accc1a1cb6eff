"""Predicted TTFT, TPOT, E2E and output tokens/s of one model copy, from the roofline of its GPUs.

The model (formulas as the report prints them; B = concurrent requests on the copy, S = input
tokens, M = output tokens, L = S + M/2 the average context while decoding, t = tensor-parallel
degree, BW = memory bandwidth, P = dense tensor peak for the compute dtype):

  decode step(b) = max(bytes(b) / (BW x eta_mem), flops(b) / (P x eta_compute))
                   + 2 x layers x allreduce(b tokens) + step_overhead
    bytes(b)  = weights read per GPU (all but the input embedding; MoE: the experts b tokens
                touch, E x (1 - (1 - k/E)^b)) + b x KV bytes of an L-token context per GPU
    flops(b)  = b x 2 x active parameters / t + b x 4 x layers x q_dim x L / t
    allreduce(n) = latency(interconnect) + 2 (t-1)/t x n x hidden x 2 bytes / link bandwidth
  prefill(S) = max(flops / (P x eta_compute), chunks x weights / (BW x eta_mem))
               + 2 x layers x allreduce(S) + step_overhead,
    flops = S x 2 x active parameters / t + 2 x layers x S x min(S, window) x q_dim / t
  Closed-loop concurrency (B clients, each sends its next request when one ends): requests
  arrive at lam = B / E2E; prefills take rho = lam x prefill of the copy's time; the other
  B - 1 requests' prefills stretch a decode step by 1 / (1 - rho_o), rho_o = rho (B-1)/B, and a
  new request waits rho_o x prefill / (2 (1 - rho_o)) (M/D/1 mean wait) for the prefills ahead.
  TTFT = request_overhead + wait + prefill(S);  TPOT = step(B_decoding) / (1 - rho_o);
  E2E = TTFT + (M - 1) x TPOT;  output tokens/s = B x M / E2E.

Efficiency factors are per engine (named below, with where each value comes from) and are what
calibration refits per accelerator from measured runs. Pure: numbers in, numbers out.
"""

from __future__ import annotations

import math

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
    request_overhead_ms: float = Field(ge=0, description="Per request before its prefill: "
                                                         "HTTP, tokenization, queue hand-off.")
    allreduce_latency_ms: float = Field(ge=0, description="Fixed cost of one tensor-parallel "
                                                          "all-reduce call.")


# Defaults, uncalibrated. eta_mem and eta_compute sit inside the ranges public numbers show
# (REFERENCE.md "Latency": eta_mem 0.55-0.85 for vLLM/TensorRT-LLM decode, prefill MFU
# 0.35-0.65); a batch-1 vLLM run of Llama-3.1-8B on an A100 decodes at 77 % of the bandwidth
# roofline (johnmusgrave.com/p/vllm-throughput-latency-sweep-on). The fixed costs are
# assumptions, not measurements: a CUDA-graph decode step still pays the scheduler and sampler
# (about a millisecond in vLLM's Python loop, less in TensorRT-LLM's C++ executor), and a request
# pays HTTP, tokenization and the hand-off to the engine before its prefill. `lmiflow calibrate`
# replaces them per accelerator and engine from benchmark records.
ENGINE_EFFICIENCY: dict[str, dict[str, float]] = {
    "vllm": {"memory": 0.75, "compute": 0.5, "step_overhead_ms": 1.0, "request_overhead_ms": 5.0},
    "trtllm": {"memory": 0.8, "compute": 0.5, "step_overhead_ms": 0.5,
               "request_overhead_ms": 3.0},
    # lmiflow's own transformers server (the local target): eager PyTorch, no CUDA graphs, a
    # Python generate loop; a guess for the first calibrated local run to replace.
    "local": {"memory": 0.5, "compute": 0.3, "step_overhead_ms": 15.0,
              "request_overhead_ms": 10.0},
}
# Small-message all-reduce time per call, by interconnect: the order of magnitude nccl-tests
# all_reduce_perf shows at a few KB (tens of microseconds; PCIe without NVLink several times
# NVLink's). Large messages run at the link rate times the bus efficiency nccl-tests reports
# for ring all-reduce (its "busbw", typically 70-80 % of the link).
ALLREDUCE_LATENCY_MS = {"nvlink": 0.02, "pcie": 0.05, "neuronlink": 0.02}
ALLREDUCE_BUS_EFFICIENCY = 0.7
# Prefills never take more than this share of a copy's time: beyond it the copy is saturated
# and queues grow without bound; predictions say so instead of dividing by ~0.
MAX_PREFILL_SHARE = 0.95
ACTIVATION_BYTES = 2  # all-reduce payloads are 16-bit activations


def default_efficiency(engine: str, interconnect: str) -> Efficiency:
    return Efficiency(**ENGINE_EFFICIENCY[engine],
                      allreduce_latency_ms=ALLREDUCE_LATENCY_MS.get(interconnect, 0.05))


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


class Prediction(BaseModel):
    ttft_ms: float
    tpot_ms: float
    e2e_ms: float
    output_tokens_per_s: float = Field(description="This copy at its concurrency.")
    bound: str = Field(description="memory or compute: what limits a decode step.")
    saturated: bool = Field(description="Prefills alone use the copy's time: the prediction is "
                                        "a floor, queues grow.")
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
                   total_weight_bytes: int | None = None) -> LatencyInputs:
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


class Roofline:
    """The model's constants for one copy and one set of factors, in seconds and bytes, so that
    stepping through concurrencies (a planner's search, a fit) costs a few multiplications."""

    def __init__(self, inp: LatencyInputs, eff: Efficiency):
        self.inp, self.eff = inp, eff
        self.bw = inp.bandwidth_gbps * 1e9 * eff.memory
        self.peak = inp.peak_tflops * 1e12 * eff.compute
        ctx = inp.input_tokens + inp.output_tokens / 2
        attended = _attended(inp, ctx)
        self.kv_per_seq = inp.kv_bytes_per_token_layer_gpu * attended
        self.flops_per_seq = (inp.flops_per_token + 4 * inp.q_dim * attended) / inp.tp
        t = inp.tp
        if t > 1:
            # Two all-reduces per layer (after attention, after the MLP) of tokens x hidden.
            bus = (inp.link_gbps or 1.0) * 1e9 * ALLREDUCE_BUS_EFFICIENCY
            self.ar_fixed = 2 * inp.layers * eff.allreduce_latency_ms / 1e3
            self.ar_per_token = (2 * inp.layers * 2 * (t - 1) / t * inp.hidden
                                 * ACTIVATION_BYTES / bus)
        else:
            self.ar_fixed = self.ar_per_token = 0.0
        self.overhead = eff.step_overhead_ms / 1e3
        self.request = eff.request_overhead_ms / 1e3
        self.prefill = self._prefill()

    def _prefill(self) -> float:
        inp = self.inp
        s = inp.input_tokens
        # Causal attention: QK^T and AV over on average half the prompt, 2 x 2 x s^2/2 x q_dim.
        flops = (s * inp.flops_per_token + 2 * inp.q_dim * s * _attended(inp, s)) / inp.tp
        chunks = math.ceil(s / MAX_BATCHED_TOKENS)
        weights = inp.dense_bytes_per_gpu + inp.expert_bytes_per_gpu * _touched_experts(
            inp, min(s, MAX_BATCHED_TOKENS))
        return (max(flops / self.peak, chunks * weights / self.bw)
                + self.ar_fixed + self.ar_per_token * s + chunks * self.overhead)

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

    def cycle(self, b: int, x: float) -> tuple[float, float, float, float]:
        """Assuming each request's E2E is x: (implied E2E, TPOT, wait, decoding requests)."""
        m, t_p = self.inp.output_tokens, self.prefill
        rho_o = min((b - 1) * t_p / x, MAX_PREFILL_SHARE)
        wait = rho_o * t_p / (2 * (1 - rho_o))
        # Requests still in their prefill (or queued for it) are not decoding.
        decoding = max(b * (1 - (t_p + wait) / x), 1.0) if m > 1 else 1.0
        tpot = self.step(decoding) / (1 - rho_o)
        return self.request + wait + t_p + (m - 1) * tpot, tpot, wait, decoding

    def solve(self, b: int) -> tuple[float, float, float, float, bool]:
        """(E2E, TPOT, wait, decoding, saturated) of b closed-loop clients: the cycle length x
        where assumed and implied E2E agree. x - implied(x) < 0 where the others' prefills
        nearly fill the copy and > 0 for a long enough cycle, so bisection finds the root."""
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

    def latency_ms(self, b: int) -> dict[str, float]:
        """TTFT, TPOT, E2E at b requests on the copy (what limits are checked against)."""
        e2e, tpot, wait, _, _ = self.solve(b)
        return {"ttft_ms": (self.request + wait + self.prefill) * 1e3, "tpot_ms": tpot * 1e3,
                "e2e_ms": e2e * 1e3}


    def predict(self, b: int) -> Prediction:
        """Steady state of b closed-loop clients on the copy, with the terms behind it."""
        e2e, tpot, wait, decoding, saturated = self.solve(b)
        w, kv, comp, ar, ovh = self.step_terms(decoding)
        return Prediction(
            ttft_ms=(self.request + wait + self.prefill) * 1e3, tpot_ms=tpot * 1e3,
            e2e_ms=e2e * 1e3, output_tokens_per_s=b * self.inp.output_tokens / e2e,
            bound="memory" if w + kv >= comp else "compute", saturated=saturated,
            terms_ms={"decode_weights": w * 1e3, "decode_kv_cache": kv * 1e3,
                      "decode_compute": comp * 1e3, "decode_allreduce": ar * 1e3,
                      "step_overhead": ovh * 1e3, "prefill": self.prefill * 1e3,
                      "queue_wait": wait * 1e3, "request_overhead": self.request * 1e3})


def predict(inp: LatencyInputs, eff: Efficiency) -> Prediction:
    """Steady state of the inputs' B closed-loop clients on one copy (module docstring)."""
    return Roofline(inp, eff).predict(inp.concurrency)
