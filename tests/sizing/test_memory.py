"""Memory per GPU on a toy model small enough to work out every byte by hand.

Toy: 4 layers, hidden 256, 8 query heads, 2 KV heads of 32, MLP 512, vocab 1000,
10,000,000 parameters of which 600,000 stay 16 bit under weight-only quantization.
Expected values are written as the arithmetic of the formula they check, not computed by
lmiflow.
"""

import pytest
from lmiflow.sizing.memory import (
    DTypeChoice,
    PerGpuEstimate,
    kv_bytes_per_sequence,
    kv_bytes_per_token,
    max_concurrency,
    overhead_terms,
    per_gpu_estimate,
    resolve_dtypes,
    total_estimate,
    weight_bytes,
)
from lmiflow.sizing.model_spec import ModelSpec

MiB = 2**20
CUDA_CONTEXT, CUDA_GRAPHS, NCCL = 512 * MiB, 256 * MiB, 384 * MiB


def toy(**kw) -> ModelSpec:
    fields = dict(model_type="llama", hidden_size=256, num_layers=4, num_attention_heads=8,
                  num_kv_heads=2, head_dim=32, intermediate_size=512, vocab_size=1000,
                  parameters=10_000_000, active_parameters=10_000_000,
                  unquantized_parameters=600_000, torch_dtype="bfloat16")
    fields.update(kw)
    return ModelSpec(**fields)


BF16 = DTypeChoice(weights="bf16", kv_cache="bf16", activations="bf16")


# ---- dtypes ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kw", "dtype", "kv", "expected"), [
    # checkpoint dtype as stored
    ({}, "auto", "auto", ("bf16", "bf16", "bf16")),
    ({"torch_dtype": "Float16"}, "auto", "auto", ("fp16", "fp16", "fp16")),
    # fp32 or unknown checkpoints are served in 16 bit; Gemma prefers bf16
    ({"torch_dtype": "float32"}, "auto", "auto", ("fp16", "fp16", "fp16")),
    ({"torch_dtype": None}, "auto", "auto", ("fp16", "fp16", "fp16")),
    ({"torch_dtype": "float32", "model_type": "gemma2"}, "auto", "auto",
     ("bf16", "bf16", "bf16")),
    # pre-quantized: activations (and so the KV cache) in the checkpoint's 16-bit dtype,
    # bf16 when that is not known
    ({"quantization": "int4", "torch_dtype": "float16"}, "auto", "auto",
     ("int4", "fp16", "fp16")),
    ({"quantization": "fp8", "torch_dtype": None}, "auto", "auto", ("fp8", "bf16", "bf16")),
    ({"quantization": "int8", "torch_dtype": "float32"}, "auto", "auto",
     ("int8", "bf16", "bf16")),
    # explicit choices win
    ({}, "fp32", "auto", ("fp32", "fp32", "fp32")),
    ({}, "fp16", "auto", ("fp16", "fp16", "fp16")),
    ({"torch_dtype": "float16"}, "int8", "auto", ("int8", "fp16", "fp16")),
    ({}, "fp8", "auto", ("fp8", "bf16", "bf16")),
    ({"torch_dtype": "float16"}, "bf16", "auto", ("bf16", "bf16", "bf16")),
    ({}, "auto", "fp8", ("bf16", "fp8", "bf16")),
    ({}, "fp16", "fp32", ("fp16", "fp32", "fp16")),
])
def test_resolve_dtypes(kw, dtype, kv, expected):
    d = resolve_dtypes(toy(**kw), dtype, kv)
    assert (d.weights, d.kv_cache, d.activations) == expected


def test_resolve_dtypes_defaults_to_auto():
    d = resolve_dtypes(toy(torch_dtype="float16"))
    assert (d.weights, d.kv_cache, d.activations, d.note) == ("fp16", "fp16", "fp16", None)


@pytest.mark.parametrize(("kw", "dtype", "note"), [
    ({}, "auto", None),
    ({}, "fp16", None),
    ({"torch_dtype": "float32"}, "auto",
     "torch_dtype float32: served in fp16 as vLLM's dtype=auto does"),
    ({"torch_dtype": None}, "auto", "torch_dtype unset: served in fp16 as vLLM's dtype=auto does"),
    ({"quantization": "int4"}, "auto",
     "pre-quantized checkpoint (int4) read from quantization_config"),
])
def test_resolve_dtypes_says_why_when_auto_changes_the_dtype(kw, dtype, note):
    assert resolve_dtypes(toy(**kw), dtype).note == note


def test_unknown_dtypes_name_the_field_and_the_choices():
    with pytest.raises(ValueError, match=r"^dtype: 'fp64' is not one of auto, fp32, fp16, bf16, "
                                         r"fp8, int8, int4$"):
        resolve_dtypes(toy(), "fp64")
    with pytest.raises(ValueError, match=r"^kv_cache_dtype: 'int4' is not one of auto, fp32, "
                                         r"fp16, bf16, fp8$"):
        resolve_dtypes(toy(), "auto", "int4")


# ---- weights ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("dtype", "group", "expected"), [
    ("fp32", None, 10_000_000 * 4),
    ("fp16", None, 10_000_000 * 2),
    ("bf16", None, 10_000_000 * 2),
    # weight-only quantization: 9.4 M quantized parameters + 0.6 M at 2 bytes
    ("fp8", None, 9_400_000 * 1 + 600_000 * 2),
    ("int8", None, 9_400_000 * 1 + 600_000 * 2),
    # int4: half a byte plus a 16-bit scale and a 4-bit zero per group (128 by default)
    ("int4", None, int(9_400_000 * (0.5 + 2.5 / 128)) + 600_000 * 2),
    ("int4", 64, int(9_400_000 * (0.5 + 2.5 / 64)) + 600_000 * 2),
])
def test_weight_bytes(dtype, group, expected):
    assert weight_bytes(toy(quant_group_size=group), dtype) == expected


# ---- KV cache --------------------------------------------------------------------------------

# 2 (K and V) x 2 KV heads x 32 x 4 layers x 2 bytes
KV_TOKEN_BF16 = 2 * 2 * 32 * 4 * 2


@pytest.mark.parametrize(("kv", "tp", "expected"), [
    ("bf16", 1, KV_TOKEN_BF16),
    ("fp32", 1, KV_TOKEN_BF16 * 2),
    ("fp8", 1, KV_TOKEN_BF16 // 2),
    ("bf16", 2, KV_TOKEN_BF16 // 2),  # one KV head per GPU
    ("bf16", 4, KV_TOKEN_BF16 // 2),  # 2 KV heads over 4 GPUs: each still holds one
    ("bf16", 8, KV_TOKEN_BF16 // 2),
])
def test_kv_bytes_per_token(kv, tp, expected):
    assert kv_bytes_per_token(toy(), kv, tp) == expected


def test_kv_bytes_per_token_defaults_to_one_gpu():
    assert kv_bytes_per_token(toy(), "bf16") == KV_TOKEN_BF16
    assert kv_bytes_per_sequence(toy(), "bf16", 100) == 100 * KV_TOKEN_BF16


def test_mla_caches_one_latent_per_layer_that_tp_does_not_split():
    s = toy(mla_kv_lora_rank=512, mla_rope_head_dim=64)
    for tp in (1, 2, 8):
        assert kv_bytes_per_token(s, "bf16", tp) == (512 + 64) * 4 * 2


def test_sliding_window_model_kv_is_capped_at_the_window():
    """Two of four layers see only the last 1,000 tokens: a 4,000-token sequence holds
    4,000 tokens in the two full layers and 1,000 in the two windowed ones."""
    per_token_layer = KV_TOKEN_BF16 // 4
    s = toy(sliding_window=1000, sliding_window_layers=2)
    assert kv_bytes_per_sequence(s, "bf16", 4000) == per_token_layer * (2 * 4000 + 2 * 1000)
    # shorter than the window: every layer holds every token
    assert kv_bytes_per_sequence(s, "bf16", 500) == per_token_layer * 4 * 500
    # every layer windowed (Mistral): the sequence costs the window, however long it is
    s = toy(sliding_window=1000, sliding_window_layers=4)
    assert kv_bytes_per_sequence(s, "bf16", 4000) == per_token_layer * 4 * 1000
    assert kv_bytes_per_sequence(s, "bf16", 4000, tp=2) == per_token_layer // 2 * 4 * 1000
    # window layers without a window (use_sliding_window false) hold everything
    s = toy(sliding_window=None, sliding_window_layers=2)
    assert kv_bytes_per_sequence(s, "bf16", 4000) == per_token_layer * 4 * 4000


# ---- overhead --------------------------------------------------------------------------------

def test_overhead_terms_one_gpu():
    # 4 sequences of 1,000 tokens: one 4,000-token prefill step; each token through one layer
    # holds 4 x hidden (residual, q/k/v/o) + 2 x MLP (gate, up) values of 2 bytes
    assert overhead_terms(toy(), "bf16", 1, 1000, 4) == {
        "cuda_context": CUDA_CONTEXT,
        "cuda_graphs": CUDA_GRAPHS,
        "prefill_activations": 4000 * (4 * 256 + 2 * 512) * 2,
        "sampler_logits": 4 * 1000 * 4,  # fp32 logits per running sequence
    }


def test_overhead_terms_sharded_add_nccl_and_cap_the_prefill_step():
    # 4 x 5,000 tokens: the scheduler prefills at most 8,192 per step; tp 2 splits the MLP
    assert overhead_terms(toy(), "fp32", 2, 5000, 4) == {
        "cuda_context": CUDA_CONTEXT,
        "cuda_graphs": CUDA_GRAPHS,
        "prefill_activations": 8192 * (4 * 256 + 2 * 256) * 4,
        "sampler_logits": 4 * 1000 * 4,
        "nccl": NCCL,
    }


def test_overhead_terms_with_no_sequences_still_count_one_prefill():
    terms = overhead_terms(toy(), "bf16", 1, 100, 0)
    assert terms["prefill_activations"] == 100 * (4 * 256 + 2 * 512) * 2
    assert terms["sampler_logits"] == 0


def test_overhead_terms_of_one_token_sequences():
    terms = overhead_terms(toy(), "bf16", 1, 1, 3)
    assert terms["prefill_activations"] == 3 * (4 * 256 + 2 * 512) * 2


def test_overhead_terms_round_a_split_mlp_up():
    terms = overhead_terms(toy(intermediate_size=514), "bf16", 4, 10, 1)
    assert terms["prefill_activations"] == 10 * (4 * 256 + 2 * 129) * 2  # ceil(514 / 4)


# ---- per GPU ---------------------------------------------------------------------------------

TP2_OVERHEAD = (CUDA_CONTEXT + CUDA_GRAPHS + NCCL + 4000 * (4 * 256 + 2 * 256) * 2
                + 4 * 1000 * 4)


def test_per_gpu_estimate_tp2():
    e = per_gpu_estimate(toy(), BF16, 2, 1000, 4)
    assert e.tensor_parallel_degree == 2 and e.concurrency == 4
    assert e.tokens_per_sequence == 1000
    assert e.weights_bytes == 10_000_000  # 20 MB of bf16 weights over 2 GPUs
    assert e.kv_bytes_per_sequence == 1000 * KV_TOKEN_BF16 // 2
    assert e.kv_cache_bytes == 4 * 1000 * KV_TOKEN_BF16 // 2
    assert e.overhead_bytes == TP2_OVERHEAD
    assert e.overhead_terms["nccl"] == NCCL
    assert e.total_bytes == 10_000_000 + 4 * 1000 * KV_TOKEN_BF16 // 2 + TP2_OVERHEAD


def test_per_gpu_estimate_takes_given_weight_bytes_and_rounds_the_shard_up():
    assert per_gpu_estimate(toy(), BF16, 2, 10, 1, total_weight_bytes=7).weights_bytes == 4
    assert per_gpu_estimate(toy(), BF16, 4, 10, 1, total_weight_bytes=0).weights_bytes == 0


def test_total_estimate_is_the_unsharded_copy():
    m = total_estimate(toy(), BF16, 1000, 4)
    overhead = CUDA_CONTEXT + CUDA_GRAPHS + 4000 * (4 * 256 + 2 * 512) * 2 + 4 * 1000 * 4
    assert (m.weights_bytes, m.kv_cache_bytes, m.overhead_bytes) == (
        20_000_000, 4 * 1000 * KV_TOKEN_BF16, overhead)
    assert m.total_bytes == 20_000_000 + 4 * 1000 * KV_TOKEN_BF16 + overhead
    assert "nccl" not in m.overhead_terms and m.overhead_terms["sampler_logits"] == 16_000


# ---- how many sequences fit ------------------------------------------------------------------

def estimate(weights=1000, kv_per_seq=300, logits=42, concurrency=4, other=500):
    terms = {"cuda_context": other, "sampler_logits": logits}
    return PerGpuEstimate(
        tensor_parallel_degree=1, concurrency=concurrency, tokens_per_sequence=10,
        weights_bytes=weights, kv_cache_bytes=kv_per_seq * concurrency,
        kv_bytes_per_sequence=kv_per_seq, overhead_bytes=sum(terms.values()),
        overhead_terms=terms, total_bytes=0)


@pytest.mark.parametrize(("usable", "expected"), [
    # fixed: 1000 weights + 500 other overhead; each sequence: 300 KV + 42 // 4 logits bytes
    (1500 + 3 * 310, 3),
    (1500 + 3 * 310 - 1, 2),
    (1500 + 310, 1),
    (1500 + 309, 0),
    (1500, 0),
    (1400, 0),
])
def test_max_concurrency_counts_whole_sequences_in_what_is_left(usable, expected):
    assert max_concurrency(usable, estimate()) == expected


def test_max_concurrency_charges_the_logits_of_one_sequence_each():
    one = estimate(concurrency=1, logits=40)
    assert max_concurrency(1500 + 2 * 340, one) == 2
    assert max_concurrency(1500 + 2 * 340 - 1, one) == 1
    assert max_concurrency(1500 + 2 * 340, estimate(concurrency=0, logits=40)) == 2
    # without a logits term the KV cache is all a sequence costs
    e = estimate(concurrency=1)
    e.overhead_terms = {"cuda_context": 500}
    e.overhead_bytes = 500
    assert max_concurrency(1500 + 2 * 300, e) == 2
    assert max_concurrency(1500 + 2 * 300 - 1, e) == 1
    # a sequence of one byte: as many as there are free bytes
    assert max_concurrency(1500 + 7, estimate(kv_per_seq=1, logits=0)) == 7


def test_max_concurrency_of_a_sequence_that_costs_nothing_is_zero_not_a_crash():
    assert max_concurrency(10_000, estimate(kv_per_seq=0, logits=0)) == 0
