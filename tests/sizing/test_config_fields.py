"""How config.json fields become a ModelSpec: quantization formats, exact counts, the small
helpers. Inputs are minimal hand-written configs."""

import pytest
from lmiflow.sizing.model_spec import (
    ModelConfigError,
    ModelSpec,
    parse_model_config,
    read_config_file,
    with_exact_counts,
)

BASE = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
        "vocab_size": 100}


def quant(q) -> tuple:
    s = parse_model_config({**BASE, "quantization_config": q})
    return s.quantization, s.quant_group_size


@pytest.mark.parametrize(("q", "expected"), [
    ("not a dict", (None, None)),
    ({}, (None, None)),
    ({"quant_method": "something-new"}, (None, None)),
    ({"quant_method": "fp8"}, ("fp8", None)),
    ({"quant_method": "FBGEMM_FP8"}, ("fp8", None)),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, ("int4", 64)),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, ("int8", 64)),
    ({"quant_method": "compressed-tensors", "format": "float-quantized"}, ("fp8", None)),
    ({"quant_method": "compressed-tensors", "format": "FP8_dynamic"}, ("fp8", None)),
    ({"quant_method": "compressed-tensors", "format": "naive-quantized",
      "config_groups": {"g0": {"weights": {"num_bits": 8, "type": "float"}}}}, ("fp8", None)),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"g0": {"weights": {"num_bits": 4, "type": "int", "group_size": 32}}}},
     ("int4", 32)),
    ({"quant_method": "compressed-tensors", "format": "int-quantized",
      "config_groups": {"g0": {"weights": {"num_bits": 8, "type": "int"}}}}, ("int8", 128)),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"g0": None, "g1": {"weights": None},
                        "g2": {"weights": {"num_bits": 16, "type": "float"}},
                        "g3": {"weights": {"num_bits": 4, "type": "int"}}}}, ("int4", 128)),
    ({"quant_method": "compressed-tensors", "format": "int-quantized"}, ("int8", None)),
    ({"quant_method": "awq", "bits": 4, "group_size": 128}, ("int4", 128)),
    ({"quant_method": "awq", "w_bit": 4, "q_group_size": 64}, ("int4", 64)),
    ({"quant_method": "awq", "w_bit": 8, "q_group_size": 64}, ("int8", 64)),
    ({"quant_method": "awq"}, ("int4", 128)),
    ({"quant_method": "bitblas", "bits": 4}, ("int4", 128)),
    ({"quant_method": "gptq", "bits": 8, "group_size": 32}, ("int8", 32)),
    ({"quant_method": "gptq", "bits": 4, "group_size": "64"}, ("int4", 64)),
    ({"quant_method": "marlin"}, ("int4", 128)),
    ({"quant_method": "hqq"}, ("int4", 128)),
    ({"quant_method": "aqlm"}, ("int4", 128)),
    ({"quant_method": "gptq"}, ("int4", 128)),
    ({"bits": 8}, ("int8", 128)),
    ({"quant_method": "mxfp4"}, ("int4", 32)),
])
def test_quantization_formats(q, expected):
    assert quant(q) == expected


def test_quantization_config_at_the_top_of_a_multimodal_config_wins():
    raw = {"model_type": "llava", "text_config": {**BASE},
           "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 64}}
    assert parse_model_config(raw).quantization == "int4"
    inner = {"model_type": "llava", "text_config": {
        **BASE, "quantization_config": {"quant_method": "fp8"}}}
    assert parse_model_config(inner).quantization == "fp8"


def test_exact_counts_replace_the_derived_total_and_scale_the_active_share():
    s = parse_model_config(BASE).model_copy(update={"parameters": 3, "active_parameters": 1})
    exact = with_exact_counts(s, 1001)
    assert (exact.parameters, exact.active_parameters, exact.parameter_source) == (
        1001, 334, "safetensors")  # 1001 / 3 = 333.67, rounded
    none = s.model_copy(update={"parameters": 0, "active_parameters": 0})
    assert with_exact_counts(none, 500).active_parameters == 500
    assert s.parameter_source == "config"


def test_kv_elements_per_token_layer():
    s = parse_model_config(BASE)
    assert s.kv_elements_per_token_layer() == 2 * 2 * 16  # K and V, 2 KV heads of 64 / 4
    mla = ModelSpec(**{**s.model_dump(), "mla_kv_lora_rank": 512, "mla_rope_head_dim": 64})
    assert mla.kv_elements_per_token_layer() == 512 + 64 and mla.is_mla


def test_model_config_error_keeps_field_and_reason():
    e = ModelConfigError("config.json:hidden_size", "missing; sizing needs it")
    assert (e.field, e.reason, str(e)) == ("config.json:hidden_size", "missing; sizing needs it",
                                           "config.json:hidden_size: missing; sizing needs it")


# ---- parameter counts of tiny configs, term by term -------------------------------------------
# hidden 8, 2 layers, 2 heads of 4, 1 KV head, MLP 16, vocab 10.
TINY = {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 16,
        "vocab_size": 10}
ATTN = 8 * 8 + 2 * 8 * 4 + 8 * 8  # q, k and v (one KV head of 4), o
MLP = 3 * 8 * 16  # gate, up, down
NORMS = 2 * 8
EMBED = 10 * 8 * 2  # input embeddings and an untied head
FINAL_NORM = 8


def tiny(**over):
    return parse_model_config({**TINY, **over})


@pytest.mark.parametrize(("over", "per_layer_extra", "embed"), [
    ({}, 0, EMBED),
    ({"model_type": "qwen2"}, 8 + 2 * 4, EMBED),  # q, k, v biases
    ({"qkv_bias": True}, 8 + 2 * 4, EMBED),
    ({"attention_bias": True}, 8 + 2 * 4 + 8, EMBED),  # and the o bias
    ({"model_type": "qwen3"}, 2 * 4, EMBED),  # q_norm, k_norm
    ({"model_type": "qwen3_moe"}, 2 * 4, EMBED),
    ({"model_type": "gemma2"}, 2 * 8, EMBED // 2),  # 4 norms a layer; tied embeddings
    ({"mlp_bias": True}, 2 * 16 + 8, EMBED),
    ({"tie_word_embeddings": True}, 0, EMBED // 2),
])
def test_dense_parameter_counts(over, per_layer_extra, embed):
    s = tiny(**over)
    total = 2 * (ATTN + MLP + NORMS + per_layer_extra) + embed + FINAL_NORM
    assert s.parameters == total and s.active_parameters == total
    norms = (4 if over.get("model_type") == "gemma2" else 2) * 8
    assert s.unquantized_parameters == embed + FINAL_NORM + 2 * norms
    assert (s.num_experts, s.experts_per_token) == (0, 0) and not s.is_moe


def test_mixtral_style_moe_counts_every_expert_and_activates_top_k():
    s = tiny(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2)
    router = 8 * 4
    assert s.parameters == 2 * (ATTN + 4 * MLP + router + NORMS) + EMBED + FINAL_NORM
    assert s.active_parameters == 2 * (ATTN + 2 * MLP + router + NORMS) + EMBED + FINAL_NORM
    assert s.unquantized_parameters == EMBED + FINAL_NORM + 2 * NORMS + 2 * router
    assert (s.num_experts, s.experts_per_token, s.is_moe) == (4, 2, True)


def test_deepseek_v3_moe_shared_expert_router_bias_and_first_dense_layers():
    s = tiny(model_type="deepseek_v3", n_routed_experts=4, num_experts_per_tok=2,
             moe_intermediate_size=6, n_shared_experts=2, first_k_dense_replace=1)
    expert, shared = 3 * 8 * 6, 3 * 8 * (6 * 2)  # two shared experts act as one twice as wide
    router = 8 * 4 + 4  # weights and e_score_correction_bias
    dense_layer = ATTN + MLP + NORMS
    moe_layer = ATTN + 4 * expert + shared + router + NORMS
    assert s.parameters == dense_layer + moe_layer + EMBED + FINAL_NORM
    active_moe = ATTN + 2 * expert + shared + router + NORMS
    assert s.active_parameters == dense_layer + active_moe + EMBED + FINAL_NORM


def test_qwen2_moe_shared_expert_has_its_own_size_and_gate():
    s = tiny(model_type="qwen2_moe", num_experts=4, num_experts_per_tok=2,
             moe_intermediate_size=6, shared_expert_intermediate_size=10)
    expert, shared = 3 * 8 * 6, 3 * 8 * 10 + 8
    bias = 8 + 2 * 4
    layer = ATTN + bias + 4 * expert + shared + 8 * 4 + NORMS
    assert s.parameters == 2 * layer + EMBED + FINAL_NORM


def test_moe_layer_frequency_alternates_dense_and_moe_layers():
    s = tiny(model_type="mixtral", num_hidden_layers=4, num_local_experts=4,
             num_experts_per_tok=2, moe_layer_freq=2)
    dense, moe = ATTN + MLP + NORMS, ATTN + 4 * MLP + 8 * 4 + NORMS
    assert s.parameters == 2 * dense + 2 * moe + EMBED + FINAL_NORM  # layers 0, 2 are MoE


@pytest.mark.parametrize(("q_lora", "q"), [
    (None, 8 * 2 * (4 + 2)),  # hidden -> heads x (nope + rope)
    (5, 8 * 5 + 5 + 5 * 2 * (4 + 2)),  # down-projection, its norm, up-projection
])
def test_mla_attention_counts(q_lora, q):
    s = tiny(model_type="deepseek_v2", kv_lora_rank=3, qk_nope_head_dim=4, qk_rope_head_dim=2,
             v_head_dim=4, q_lora_rank=q_lora)
    kv = 8 * (3 + 2) + 3 + 3 * 2 * (4 + 4)
    attn = q + kv + 2 * 4 * 8
    assert s.parameters == 2 * (attn + MLP + NORMS) + EMBED + FINAL_NORM
    assert (s.mla_kv_lora_rank, s.mla_rope_head_dim, s.is_mla) == (3, 2, True)


def test_mla_rope_dim_defaults_to_64_and_needs_deepseek():
    s = tiny(model_type="deepseek_v3", kv_lora_rank=3, qk_nope_head_dim=4,
             qk_rope_head_dim=2, v_head_dim=4)
    assert s.mla_rope_head_dim == 2
    assert not tiny(kv_lora_rank=3).is_mla  # a llama with the key is not MLA
    assert tiny().mla_rope_head_dim is None


# ---- field names across config styles -----------------------------------------------------------

def shape(s):
    return (s.hidden_size, s.num_layers, s.num_attention_heads, s.num_kv_heads, s.head_dim,
            s.intermediate_size, s.vocab_size)


def test_gpt2_and_t5_style_field_names():
    gpt2 = parse_model_config({"model_type": "gpt2", "n_embd": 8, "n_layer": 2, "n_head": 2,
                               "n_inner": 16, "vocab_size": 10})
    assert shape(gpt2) == (8, 2, 2, 2, 4, 16, 10)
    t5 = parse_model_config({"model_type": "opt", "d_model": 8, "num_layers": 3,
                             "num_heads": 4, "ffn_dim": 24, "vocab_size": 10,
                             "num_kv_heads": 2})
    assert shape(t5) == (8, 3, 4, 2, 2, 24, 10)


def test_multi_query_means_one_kv_head_and_head_dim_defaults_to_hidden_over_heads():
    s = parse_model_config({**TINY, "num_key_value_heads": None, "multi_query": True,
                            "model_type": "falcon"})
    assert (s.num_kv_heads, s.head_dim) == (1, 4)
    assert tiny(multi_query=False).num_kv_heads == 1  # from num_key_value_heads
    assert tiny(head_dim=6).head_dim == 6


def test_unknown_architecture_without_mlp_size_assumes_4x_hidden_and_says_estimated():
    s = parse_model_config({**TINY, "model_type": "newarch", "intermediate_size": None})
    assert s.intermediate_size == 4 * 8
    assert s.estimate_note == ("architecture 'newarch' is not modelled exactly: parameters and "
                               "KV cache are estimated from the generic decoder layout (gated "
                               "MLP, no biases)")
    assert tiny().estimate_note is None
    with pytest.raises(ModelConfigError) as err:
        tiny(intermediate_size=None)
    assert str(err.value) == "config.json:intermediate_size: missing; sizing needs it"


def test_where_model_type_architecture_and_dtype_come_from():
    wrapped = {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
               "torch_dtype": "bfloat16",
               "text_config": {k: v for k, v in TINY.items() if k != "model_type"}}
    s = parse_model_config(wrapped)
    assert (s.model_type, s.architecture, s.torch_dtype) == (
        "llava", "LlavaForConditionalGeneration", "bfloat16")
    inner = {"model_type": "x", "text_config": {**TINY, "architectures": ["LlamaForCausalLM"],
                                                "dtype": "float16"}}
    s = parse_model_config(inner)
    assert (s.model_type, s.architecture, s.torch_dtype) == ("llama", "LlamaForCausalLM",
                                                             "float16")
    s = parse_model_config({k: v for k, v in TINY.items() if k != "model_type"})
    assert (s.model_type, s.architecture, s.torch_dtype) == ("unknown", None, None)
    assert tiny(torch_dtype="float32", dtype="bfloat16").torch_dtype == "float32"


def test_tied_embeddings_default_on_for_gemma_and_read_from_the_wrapper():
    assert parse_model_config({**TINY, "model_type": "gemma"}).tie_word_embeddings
    assert not tiny().tie_word_embeddings
    wrapped = {"model_type": "llava", "tie_word_embeddings": True, "text_config": dict(TINY)}
    assert parse_model_config(wrapped).tie_word_embeddings
    inner_wins = {"model_type": "llava", "tie_word_embeddings": True,
                  "text_config": {**TINY, "tie_word_embeddings": False}}
    assert not parse_model_config(inner_wins).tie_word_embeddings


@pytest.mark.parametrize(("over", "window", "layers"), [
    ({"sliding_window": 4096}, 4096, 2),  # Mistral: every layer
    ({"sliding_window": 4096, "use_sliding_window": False}, None, 0),  # Qwen2: off
    ({"sliding_window": 4096, "use_sliding_window": True}, 4096, 2),
    ({"sliding_window": 4096, "model_type": "gemma2", "num_hidden_layers": 5}, 4096, 3),
    ({"sliding_window": 4096, "num_hidden_layers": 3,
      "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}, 4096, 2),
    ({"sliding_window": None}, None, 0),
])
def test_sliding_window_layers(over, window, layers):
    s = tiny(**over)
    assert (s.sliding_window, s.sliding_window_layers) == (window, layers)


def test_config_must_be_an_object():
    with pytest.raises(ModelConfigError) as err:
        parse_model_config(["not", "a", "dict"])
    assert (err.value.field, err.value.reason) == ("config.json", "must be a JSON object")


# ---- errors name the field ----------------------------------------------------------------------

@pytest.mark.parametrize(("over", "field", "reason"), [
    ({"hidden_size": None}, "config.json:hidden_size", "missing; sizing needs it"),
    ({"num_hidden_layers": 0}, "config.json:num_hidden_layers",
     "must be a positive integer, got 0"),
    ({"num_attention_heads": -2}, "config.json:num_attention_heads",
     "must be a positive integer, got -2"),
    ({"vocab_size": True}, "config.json:vocab_size", "must be a positive integer, got True"),
    ({"vocab_size": "32000"}, "config.json:vocab_size",
     "must be a positive integer, got '32000'"),
    ({"hidden_size": None, "d_model": 8.0}, "config.json:d_model",
     "must be a positive integer, got 8.0"),
])
def test_bad_fields_are_named_with_the_reason(over, field, reason):
    with pytest.raises(ModelConfigError) as err:
        tiny(**over)
    assert (err.value.field, err.value.reason) == (field, reason)


def test_one_is_a_positive_integer():
    assert tiny(num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1).num_layers == 1


def test_config_files_that_cannot_be_read(tmp_path):
    with pytest.raises(ModelConfigError) as err:
        read_config_file(tmp_path)
    assert (err.value.field, err.value.reason) == (
        "model", f"{tmp_path / 'config.json'} not found (need a directory with config.json)")
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelConfigError) as err:
        read_config_file(tmp_path)
    assert (err.value.field, err.value.reason) == (
        "model", f"{tmp_path / 'config.json'} must hold a JSON object")
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(ModelConfigError) as err:
        read_config_file(tmp_path / "config.json")
    assert err.value.field == "model" and err.value.reason.startswith(
        f"{tmp_path / 'config.json'} is not valid JSON: ")
    (tmp_path / "config.json").write_text('{"name": "caf\u00e9"}', encoding="utf-8")
    assert read_config_file(tmp_path) == {"name": "caf\u00e9"}


# ---- numbers at the edges (issue 24): checked before any arithmetic ----------------------------

@pytest.mark.parametrize(("over", "field", "reason"), [
    ({"sliding_window": float("inf")}, "config.json:sliding_window",
     "must be a whole number >= 0, got inf"),
    ({"sliding_window": -5}, "config.json:sliding_window", "must be a whole number >= 0, got -5"),
    ({"vocab_size": 10**40}, "config.json:vocab_size",
     "must be a positive integer no larger than 16,777,216, got a 41-digit number"),
    ({"hidden_size": 2**18 + 1}, "config.json:hidden_size",
     "must be a positive integer no larger than 262,144, got 262145"),
    ({"max_position_embeddings": float("nan")}, "config.json:max_position_embeddings",
     "must be a positive integer, got nan"),
    ({"max_position_embeddings": 4096.0}, "config.json:max_position_embeddings",
     "must be a positive integer, got 4096.0"),
    ({"rope_theta": float("inf")}, "config.json:rope_theta",
     "must be a number above 0 and below 1e+15, got inf"),
    ({"rope_theta": True}, "config.json:rope_theta",
     "must be a number above 0 and below 1e+15, got True"),
    ({"rms_norm_eps": 1}, "config.json:rms_norm_eps",
     "must be a number above 0 and below 1, got 1"),
    ({"layer_norm_epsilon": "1e-5"}, "config.json:layer_norm_epsilon",
     "must be a number above 0 and below 1, got '1e-5'"),
    ({"multi_query": 1}, "config.json:multi_query", "must be true or false, got 1"),
    ({"torch_dtype": ["bfloat16"]}, "config.json:torch_dtype",
     "must be a string, got ['bfloat16']"),
    ({"model_type": "x" * 129}, "config.json:model_type",
     "must be at most 128 characters, got 129"),
    ({"architectures": ["A" * 200]}, "config.json:architectures",
     "must be a list of class names (strings of at most 128 characters), got "
     "['" + "A" * 35 + "..."),  # the value cut at 40 characters
    ({"layer_types": "sliding"}, "config.json:layer_types", "must be a list, got 'sliding'"),
    ({"num_local_experts": 4, "num_experts_per_tok": 5}, "config.json:num_experts_per_tok",
     "5 is more than the model's 4 experts"),
    ({"moe_layer_freq": 0, "num_local_experts": 4}, "config.json:moe_layer_freq",
     "must be a positive integer, got 0"),
    ({"first_k_dense_replace": -1}, "config.json:first_k_dense_replace",
     "must be a whole number >= 0, got -1"),
    ({"quantization_config": {"bits": 4, "group_size": float("inf")}},
     "config.json:quantization_config.group_size", "must be a positive integer, got inf"),
])
def test_values_out_of_type_or_range_are_named_before_any_arithmetic(over, field, reason):
    with pytest.raises(ModelConfigError) as err:
        tiny(**over)
    assert (err.value.field, err.value.reason) == (field, reason)


def test_a_wrapper_names_the_text_config_key():
    with pytest.raises(ModelConfigError) as err:
        parse_model_config({"model_type": "llava",
                            "text_config": {**TINY, "rms_norm_eps": float("nan")}})
    assert err.value.field == "config.json:text_config.rms_norm_eps"


def test_values_at_the_bounds_are_accepted():
    s = tiny(hidden_size=2**18, num_attention_heads=2**14, num_key_value_heads=2**14,
             vocab_size=2**24, max_position_embeddings=2**32, sliding_window=0,
             rope_theta=1e14, rms_norm_eps=1e-12, rope_parameters={"rope_theta": 10000})
    assert (s.hidden_size, s.vocab_size, s.max_position_embeddings) == (2**18, 2**24, 2**32)
    assert (s.sliding_window, s.sliding_window_layers) == (None, 0)  # 0: no window


def test_per_channel_group_size_sizes_like_the_default_group():
    # GPTQ writes group_size -1 for one scale per channel; it was a negative group before
    assert quant({"quant_method": "gptq", "bits": 4, "group_size": -1}) == ("int4", 128)


@pytest.mark.parametrize("groups", [["not", "a", "dict"], {"g0": ["x"]}, {"g0": {"weights": 4}}])
def test_compressed_tensors_groups_of_the_wrong_shape_are_skipped(groups):
    assert quant({"quant_method": "compressed-tensors", "format": "pack-quantized",
                  "config_groups": groups}) == ("int8", None)


def test_config_file_with_an_integer_too_long_to_read(tmp_path):
    (tmp_path / "config.json").write_text('{"vocab_size": ' + "9" * 5000 + "}")
    with pytest.raises(ModelConfigError) as err:
        read_config_file(tmp_path)
    assert err.value.reason == (f"{tmp_path / 'config.json'} holds a number too long to be a "
                                "model's setting")
