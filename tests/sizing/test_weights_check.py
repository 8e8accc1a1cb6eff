"""config.json against the tensor shapes of its weights: each disagreement names the key and
both values; what cannot be compared exactly is skipped with the reason."""

from __future__ import annotations

import pytest
from lmiflow.sizing.model_spec import ModelConfigError, parse_model_config
from lmiflow.sizing.weights_check import compare_with_weights, parameter_count

# The demo model's layout (lmiflow demo-model): a tied Llama, hidden 64, 2 layers, 4 heads of
# 16, 2 KV heads, MLP 128, vocab 512.
CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
          "intermediate_size": 128, "vocab_size": 512, "tie_word_embeddings": True}


def llama_shapes(prefix="model.", layers=2, hidden=64, vocab=512, q=64, kv=32, inter=128,
                 head=False):
    shapes = {f"{prefix}embed_tokens.weight": [vocab, hidden], f"{prefix}norm.weight": [hidden]}
    for i in range(layers):
        p = f"{prefix}layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": [q, hidden],
                   p + "self_attn.k_proj.weight": [kv, hidden],
                   p + "self_attn.v_proj.weight": [kv, hidden],
                   p + "self_attn.o_proj.weight": [hidden, q],
                   p + "mlp.gate_proj.weight": [inter, hidden],
                   p + "mlp.up_proj.weight": [inter, hidden],
                   p + "mlp.down_proj.weight": [hidden, inter],
                   p + "input_layernorm.weight": [hidden],
                   p + "post_attention_layernorm.weight": [hidden]}
    if head:
        shapes["lm_head.weight"] = [vocab, hidden]
    return shapes


def check(config=None, shapes=None, total=None):
    raw = {**CONFIG, **(config or {})}
    shapes = llama_shapes() if shapes is None else shapes
    return compare_with_weights(raw, parse_model_config(raw), shapes,
                                total if total is not None else parameter_count(shapes))


def test_a_config_that_matches_its_weights_passes_everything():
    assert parameter_count(llama_shapes()) == parse_model_config(CONFIG).parameters == 106_816
    assert check() is None
    assert check({"tie_word_embeddings": False}, llama_shapes(head=True)) is None


@pytest.mark.parametrize(("config", "key", "reason"), [
    ({"hidden_size": 128}, "hidden_size",
     "128, but the weights hold 64 (model.embed_tokens.weight is 512 x 64)"),
    ({"vocab_size": 1024}, "vocab_size",
     "1024, but the weights hold 512 (model.embed_tokens.weight is 512 x 64)"),
    ({"num_hidden_layers": 3}, "num_hidden_layers",
     "3, but the weights hold 2 decoder layers (model.layers.0 to model.layers.1)"),
    ({"num_hidden_layers": 1}, "num_hidden_layers",
     "1, but the weights hold 2 decoder layers (model.layers.0 to model.layers.1)"),
    ({"num_attention_heads": 2, "num_key_value_heads": 1}, "num_attention_heads",
     "2 (x head_dim 16 = 32 rows), but the weights hold model.layers.0.self_attn.q_proj.weight "
     "as 64 x 64"),
    ({"num_key_value_heads": 4}, "num_key_value_heads",
     "4 (x head_dim 16 = 64 rows), but the weights hold model.layers.0.self_attn.k_proj.weight "
     "as 32 x 64"),
    ({"intermediate_size": 256}, "intermediate_size",
     "256, but the weights hold model.layers.0.mlp.gate_proj.weight as 128 x 64"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings",
     "false, but the weights hold no lm_head.weight (the output layer would be left random)"),
])
def test_each_disagreement_names_the_key_and_both_values(config, key, reason):
    with pytest.raises(ModelConfigError) as err:
        check(config)
    assert (err.value.field, err.value.reason) == (f"config.json:{key}", reason)


def test_o_proj_and_the_output_head_are_compared_too():
    shapes = llama_shapes()
    shapes["model.layers.0.self_attn.o_proj.weight"] = [64, 32]
    with pytest.raises(ModelConfigError, match=r"num_attention_heads") as err:
        check(shapes=shapes)
    assert err.value.reason.endswith("o_proj.weight as 64 x 32")
    shapes = llama_shapes(head=True)
    shapes["lm_head.weight"] = [500, 64]
    with pytest.raises(ModelConfigError) as err:
        check(shapes=shapes)
    assert (err.value.field, err.value.reason) == (
        "config.json:vocab_size",
        "512 (x hidden_size 64), but the weights hold lm_head.weight as 500 x 64")


def test_the_total_catches_what_no_single_shape_shows():
    with pytest.raises(ModelConfigError) as err:
        check({"mlp_bias": True})  # biases the weights do not hold
    assert (err.value.field, err.value.reason) == (
        "config.json", "describes 107,456 parameters, but the weights hold 106,816")
    assert check(total=106_816 + 50) is None  # rotary buffers, scales: within 0.1 %


def test_no_layers_in_the_weights():
    shapes = {"model.embed_tokens.weight": [512, 64]}
    with pytest.raises(ModelConfigError) as err:
        check(shapes=shapes)
    assert err.value.reason == "2, but the weights hold no model.layers.N tensors"


def test_a_multimodal_wrapper_names_text_config_and_skips_the_total():
    raw = {"model_type": "llava", "text_config": {**CONFIG, "hidden_size": 128}}
    shapes = {**llama_shapes("language_model.model."), "vision_tower.layers.0.x": [7, 7],
              "vision_tower.layers.30.x": [7]}
    with pytest.raises(ModelConfigError) as err:
        compare_with_weights(raw, parse_model_config(raw), shapes, parameter_count(shapes))
    assert err.value.field == "config.json:text_config.hidden_size"
    raw["text_config"]["hidden_size"] = 64
    raw["text_config"]["model_type"] = "llama"
    note = compare_with_weights(raw, parse_model_config(raw), shapes, parameter_count(shapes))
    assert note == ("parameter total not compared: a multimodal checkpoint's total includes its "
                    "vision tower")


def test_multi_token_prediction_layers_beyond_the_decoder_are_allowed():
    shapes = llama_shapes(layers=3)
    note = check({"num_nextn_predict_layers": 1}, shapes)
    assert note == ("parameter total not compared: the weights hold multi-token-prediction "
                    "layers the decoder does not use")
    with pytest.raises(ModelConfigError, match="num_hidden_layers"):
        check({}, shapes)


def test_packed_quantized_weights_compare_only_embeddings_and_layers():
    shapes = llama_shapes()
    shapes["model.layers.0.self_attn.q_proj.weight"] = [8, 64]  # packed int4
    q = {"quantization_config": {"quant_method": "awq", "bits": 4}}
    assert check(q, shapes, total=1) == (
        "int4 checkpoint: its matrices are packed, so their shapes and the parameter total "
        "say nothing exact")
    with pytest.raises(ModelConfigError, match="hidden_size"):
        check({**q, "hidden_size": 128}, shapes)


def test_unknown_layouts_are_skipped_with_the_reason():
    gpt2 = {"wte.weight": [512, 64], "h.0.attn.c_attn.weight": [64, 192]}
    assert check(shapes=gpt2) == ("config.json not compared with the weights: their tensor "
                                  "names are not of the Llama family (no single "
                                  "...embed_tokens.weight)")
    note = check({"model_type": "newarch"}, total=1)  # generic estimate: no total, no head
    assert note == "projections not compared (newarch attention is not the Llama family's)"
