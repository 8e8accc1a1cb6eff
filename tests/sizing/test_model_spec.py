"""Parameter counts and KV sizes from config.json, checked against published figures."""

import json
from pathlib import Path

import pytest
from lmiflow.sizing.memory import kv_bytes_per_token, resolve_dtypes, weight_bytes
from lmiflow.sizing.model_spec import ModelConfigError, parse_model_config, read_config_file

MODELS = Path(__file__).resolve().parents[2] / "configs" / "models"
SNAPSHOTS = sorted(d.name for d in MODELS.iterdir() if (d / "source.json").is_file())


def spec(name):
    return parse_model_config(read_config_file(MODELS / name))


def test_at_least_six_architectures_are_bundled():
    types = {spec(n).model_type for n in SNAPSHOTS}
    assert {"llama", "mixtral", "qwen2", "gemma2", "phi3", "deepseek_v3"} <= types


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_parameters_within_half_a_percent_of_published(name):
    published = json.loads((MODELS / name / "source.json").read_text())["published_parameters"]
    got = spec(name).parameters
    assert abs(got - published) / published < 0.005, (name, got, published)


def test_moe_active_parameters():
    mixtral = spec("mixtral-8x7b")
    # 2 of 8 experts per token: published "12.9B active".
    assert 12.8e9 < mixtral.active_parameters < 13.0e9
    ds = spec("deepseek-v3")
    assert 37.0e9 < ds.active_parameters < 38.0e9  # "37B activated"
    assert ds.num_experts == 256 and ds.experts_per_token == 8


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # MHA: 2 x 40 layers x 40 heads x 128 x 2 bytes (the users' worked example).
        ("llama-2-13b", 819_200),
        # GQA: 2 x 80 x 8 kv heads x 128 x 2 = 327,680 (the notes' formula says 8x that).
        ("llama-3.1-70b", 327_680),
        ("llama-3.1-8b", 2 * 32 * 8 * 128 * 2),
        ("qwen2-7b", 2 * 28 * 4 * 128 * 2),
        # explicit head_dim 256 (not hidden / heads = 224).
        ("gemma-2-9b", 2 * 42 * 8 * 256 * 2),
        # MLA: (kv_lora_rank 512 + rope 64) x 61 layers x 2 bytes, no x2 for K and V.
        ("deepseek-v3", (512 + 64) * 61 * 2),
    ],
)
def test_kv_bytes_per_token_exact(name, expected):
    s = spec(name)
    assert kv_bytes_per_token(s, resolve_dtypes(s).kv_cache) == expected


def test_gqa_formula_of_the_notes_overstates_by_heads_over_kv_heads():
    s = spec("llama-3.1-70b")
    naive = 2 * 2 * s.num_layers * s.hidden_size
    assert naive / kv_bytes_per_token(s, "bf16") == 8


def test_kv_heads_are_duplicated_when_fewer_than_tp():
    s = spec("qwen2-7b")  # 4 KV heads
    per_tp1 = kv_bytes_per_token(s, "bf16", 1)
    assert kv_bytes_per_token(s, "bf16", 4) == per_tp1 // 4
    # tp 8 > 4 KV heads: each GPU still holds one whole head, not half.
    assert kv_bytes_per_token(s, "bf16", 8) == per_tp1 // 4


def test_mla_latent_is_not_split_by_tp():
    s = spec("deepseek-v3")
    assert kv_bytes_per_token(s, "bf16", 8) == kv_bytes_per_token(s, "bf16", 1)


def test_sliding_window_handling():
    assert spec("mistral-7b").sliding_window == 4096
    assert spec("mistral-7b").sliding_window_layers == 32
    gemma = spec("gemma-2-9b")
    assert gemma.sliding_window == 4096 and gemma.sliding_window_layers == 21
    # Qwen2 carries sliding_window with use_sliding_window false: ignored.
    assert spec("qwen2-7b").sliding_window is None


def test_qwen2_counts_qkv_biases():
    cfg = read_config_file(MODELS / "qwen2-7b")
    with_bias = parse_model_config(cfg).parameters
    as_llama = parse_model_config({**cfg, "model_type": "llama"}).parameters
    layers, hidden, kv = cfg["num_hidden_layers"], cfg["hidden_size"], 4 * 128
    assert with_bias - as_llama == layers * (hidden + 2 * kv)


def test_tied_embeddings_count_once():
    cfg = read_config_file(MODELS / "llama-3.1-8b")
    untied = parse_model_config(cfg).parameters
    tied = parse_model_config({**cfg, "tie_word_embeddings": True}).parameters
    assert untied - tied == cfg["vocab_size"] * cfg["hidden_size"]


def test_auto_dtype_reads_torch_dtype_and_quantization():
    assert resolve_dtypes(spec("llama-2-13b")).weights == "fp16"
    assert resolve_dtypes(spec("llama-3.1-8b")).weights == "bf16"
    ds = resolve_dtypes(spec("deepseek-v3"))
    assert ds.weights == "fp8" and ds.kv_cache == "bf16"
    # fp32 checkpoints are served in 16 bit by vLLM's auto.
    assert resolve_dtypes(spec("gemma-2-9b")).weights == "bf16"


def test_int4_awq_checkpoint_weights():
    cfg = read_config_file(MODELS / "llama-3.1-8b")
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    s = parse_model_config(cfg)
    d = resolve_dtypes(s)
    assert d.weights == "int4" and d.kv_cache == "bf16"
    wb = weight_bytes(s, "int4")
    # Embeddings + head stay 16 bit (2.1 GB); the rest is ~0.52 bytes/param: ~5.7 GB.
    assert 5.3e9 < wb < 6.0e9
    assert wb < weight_bytes(s, "int8") < weight_bytes(s, "bf16")


def test_weight_bytes_by_dtype():
    s = spec("llama-2-13b")
    assert weight_bytes(s, "fp16") == 2 * s.parameters
    assert weight_bytes(s, "fp32") == 4 * s.parameters
    assert weight_bytes(s, "fp8") < 0.6 * weight_bytes(s, "fp16")


def test_unknown_architecture_is_labelled_an_estimate():
    s = parse_model_config({"model_type": "newarch", "hidden_size": 1024,
                            "num_hidden_layers": 4, "num_attention_heads": 8,
                            "vocab_size": 1000})
    assert s.estimate_note and "estimate" in s.estimate_note
    assert s.parameters > 0


@pytest.mark.parametrize("missing", ["hidden_size", "num_hidden_layers", "num_attention_heads",
                                     "vocab_size"])
def test_missing_field_is_named(missing):
    cfg = read_config_file(MODELS / "llama-3.1-8b")
    del cfg[missing]
    with pytest.raises(ModelConfigError) as e:
        parse_model_config(cfg)
    assert missing in e.value.field


def test_bad_config_files(tmp_path):
    with pytest.raises(ModelConfigError, match="not found"):
        read_config_file(tmp_path)
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        read_config_file(tmp_path)
