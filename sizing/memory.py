"""GPU memory a model needs per GPU at a tensor-parallel degree: weights, KV cache, overhead.

The budget follows vLLM (the LMI default backend): the engine may use
`gpu_memory_utilization` x the GPU's memory, and weights, KV blocks, activations, CUDA
context, NCCL buffers and CUDA graphs all come out of it.
"""

from __future__ import annotations

import math

from lmiflow.sizing.model_spec import ModelSpec
from pydantic import BaseModel, Field

GiB = 1024**3
MiB = 1024**2

DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}
WEIGHT_DTYPES = tuple(DTYPE_BYTES)
KV_DTYPES = ("fp32", "fp16", "bf16", "fp8")
TORCH_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float": "fp32",
                "half": "fp16"}

# Runtime overhead terms, per GPU. Values from vLLM's memory profiling as commonly reported
# (REFERENCE.md, "Runtime budget"); each is a named, documented constant, not a fudge factor.
CUDA_CONTEXT_BYTES = 512 * MiB  # CUDA context + cuBLAS/cuDNN workspaces (non-torch memory)
NCCL_BYTES = 384 * MiB  # NCCL communicator buffers, only when tp >= 2
CUDA_GRAPH_BYTES = 256 * MiB  # captured decode graphs (vLLM captures by default)
# vLLM's scheduler prefills up to max_num_batched_tokens per step (8192 by default in V1).
MAX_BATCHED_TOKENS = 8192


class DTypeChoice(BaseModel):
    weights: str = Field(description="Weights dtype used for sizing (fp32..int4).")
    kv_cache: str
    activations: str
    note: str | None = None


class MemoryBreakdown(BaseModel):
    """Bytes on one GPU (per_gpu=True) or for the whole model copy."""

    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    total_bytes: int
    overhead_terms: dict[str, int] = Field(default_factory=dict)


def resolve_dtypes(spec: ModelSpec, dtype: str = "auto", kv_dtype: str = "auto") -> DTypeChoice:
    """Which dtypes the engine will really use, as vLLM's `auto` would pick them."""
    note = None
    torch_d = TORCH_DTYPES.get((spec.torch_dtype or "").lower())
    if dtype == "auto":
        if spec.quantization:
            weights = spec.quantization
            note = f"pre-quantized checkpoint ({spec.quantization}) read from quantization_config"
        elif torch_d == "fp32" or torch_d is None:
            # vLLM's auto serves fp32 checkpoints in 16 bit (bf16 where the model prefers it).
            weights = "bf16" if spec.model_type.startswith("gemma") else "fp16"
            note = (f"torch_dtype {spec.torch_dtype or 'unset'}: served in {weights} "
                    "as vLLM's dtype=auto does")
        else:
            weights = torch_d
    else:
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype: {dtype!r} is not one of auto, {', '.join(DTYPE_BYTES)}")
        weights = dtype
    activations = weights if weights in ("fp32", "fp16", "bf16") else (
        torch_d if torch_d in ("fp16", "bf16") else "bf16")
    if kv_dtype == "auto":
        kv = activations
    elif kv_dtype in KV_DTYPES:
        kv = kv_dtype
    else:
        raise ValueError(f"kv_cache_dtype: {kv_dtype!r} is not one of auto, {', '.join(KV_DTYPES)}")
    return DTypeChoice(weights=weights, kv_cache=kv, activations=activations, note=note)


def weight_bytes(spec: ModelSpec, weights_dtype: str) -> int:
    """Whole-model weight bytes. Weight-only quantization leaves embeddings, head and norms in
    16 bit; int4 adds group scales and zeros (16-bit scale + 4-bit zero per group)."""
    b = DTYPE_BYTES[weights_dtype]
    if b >= 2:
        return int(spec.parameters * b)
    quantized = spec.parameters - spec.unquantized_parameters
    per_param = b
    if weights_dtype == "int4":
        group = spec.quant_group_size or 128
        per_param += (2 + 0.5) / group
    return int(quantized * per_param + spec.unquantized_parameters * 2)


def kv_bytes_per_token(spec: ModelSpec, kv_dtype: str, tp: int = 1) -> int:
    """KV bytes one token holds across all layers, on one GPU at tensor-parallel degree tp.

    GQA/MHA: 2 x kv_heads_per_gpu x head_dim; vLLM duplicates KV heads when kv_heads < tp, so
    each GPU holds at least one. MLA keeps one latent per layer that tp does not split.
    """
    b = DTYPE_BYTES[kv_dtype]
    if spec.is_mla:
        per_layer = spec.kv_elements_per_token_layer()
    else:
        per_layer = 2 * max(1, spec.num_kv_heads // tp) * spec.head_dim
    return int(per_layer * spec.num_layers * b)


def kv_bytes_per_sequence(spec: ModelSpec, kv_dtype: str, tokens: int, tp: int = 1) -> int:
    """KV bytes of one sequence of `tokens`: windowed layers hold at most the window."""
    per_token_layer = kv_bytes_per_token(spec, kv_dtype, tp) / spec.num_layers
    windowed = spec.sliding_window_layers
    held_windowed = min(tokens, spec.sliding_window or tokens)
    return int(per_token_layer * ((spec.num_layers - windowed) * tokens
                                  + windowed * held_windowed))


def overhead_terms(spec: ModelSpec, activation_dtype: str, tp: int, tokens: int,
                   concurrency: int) -> dict[str, int]:
    """Runtime memory beyond weights and KV cache on one GPU, as named terms.

    prefill_activations: the peak of one scheduler step: up to MAX_BATCHED_TOKENS tokens (or the
    whole batch, if smaller) through one layer: residual + q/k/v/o projections (~4 x hidden)
    and the MLP's gate/up outputs (2 x intermediate / tp), in the activation dtype.
    sampler_logits: fp32 logits for every running sequence (vocab x 4 bytes each).
    """
    act_b = DTYPE_BYTES[activation_dtype]
    step_tokens = min(MAX_BATCHED_TOKENS, max(tokens, 1) * max(concurrency, 1))
    inter = spec.intermediate_size
    activations = int(step_tokens * (4 * spec.hidden_size + 2 * math.ceil(inter / tp)) * act_b)
    terms = {
        "cuda_context": CUDA_CONTEXT_BYTES,
        "cuda_graphs": CUDA_GRAPH_BYTES,
        "prefill_activations": activations,
        "sampler_logits": int(concurrency * spec.vocab_size * 4),
    }
    if tp >= 2:
        terms["nccl"] = NCCL_BYTES
    return terms


class PerGpuEstimate(BaseModel):
    tensor_parallel_degree: int
    concurrency: int = Field(description="Concurrent sequences this model copy holds.")
    tokens_per_sequence: int
    weights_bytes: int
    kv_cache_bytes: int
    kv_bytes_per_sequence: int
    overhead_bytes: int
    overhead_terms: dict[str, int]
    total_bytes: int


def per_gpu_estimate(spec: ModelSpec, dtypes: DTypeChoice, tp: int, tokens: int,
                     concurrency: int, total_weight_bytes: int | None = None) -> PerGpuEstimate:
    """What one GPU of a model copy sharded tp ways must hold for `concurrency` sequences."""
    wb = total_weight_bytes if total_weight_bytes is not None else weight_bytes(
        spec, dtypes.weights)
    weights = math.ceil(wb / tp)
    per_seq = kv_bytes_per_sequence(spec, dtypes.kv_cache, tokens, tp)
    kv = per_seq * concurrency
    terms = overhead_terms(spec, dtypes.activations, tp, tokens, concurrency)
    overhead = sum(terms.values())
    return PerGpuEstimate(
        tensor_parallel_degree=tp,
        concurrency=concurrency,
        tokens_per_sequence=tokens,
        weights_bytes=weights,
        kv_cache_bytes=kv,
        kv_bytes_per_sequence=per_seq,
        overhead_bytes=overhead,
        overhead_terms=terms,
        total_bytes=weights + kv + overhead,
    )


def total_estimate(spec: ModelSpec, dtypes: DTypeChoice, tokens: int,
                   concurrency: int) -> MemoryBreakdown:
    """The whole model copy, unsharded (tp=1): what the users' notes call 'total memory'."""
    e = per_gpu_estimate(spec, dtypes, 1, tokens, concurrency)
    return MemoryBreakdown(weights_bytes=e.weights_bytes, kv_cache_bytes=e.kv_cache_bytes,
                           overhead_bytes=e.overhead_bytes, total_bytes=e.total_bytes,
                           overhead_terms=e.overhead_terms)


def max_concurrency(usable_bytes: int, est: PerGpuEstimate) -> int:
    """Sequences of the requested length that fit in what weights and overhead leave free.

    The logits term grows with concurrency; it is charged per sequence here."""
    fixed = est.weights_bytes + est.overhead_bytes - est.overhead_terms.get("sampler_logits", 0)
    per_seq = est.kv_bytes_per_sequence + (
        est.overhead_terms.get("sampler_logits", 0) // max(est.concurrency, 1))
    if per_seq <= 0:
        return 0
    return max(0, (usable_bytes - fixed) // per_seq)

