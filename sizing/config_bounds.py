"""The values of a `config.json` that sizing (and the server after it) reads, checked at the
boundary: each key's type and range, before any arithmetic. A config.json is anyone's JSON:
Python's json module reads `Infinity`, `NaN` and integers of thousands of digits, and a value
that is past every real model either overflows the arithmetic (`int(inf)`, `float(10**400)`)
or yields a plan for a model that cannot exist.

Bounds are far beyond every published model (Llama-3.1-405B: hidden 16384, 126 layers;
Gemma-3: vocab 262144; DeepSeek-V3: 256 experts; Llama-4 Scout: 10M positions) and small
enough that every product sizing forms stays a finite float. Hand-written rather than a
pydantic model because the message must name the key as config.json spells it (n_embd,
d_model...) and say what a valid value is.
"""

from __future__ import annotations

from typing import Any

# key -> (smallest, largest) for integer counts. 0 is allowed where it means "none".
INT_BOUNDS: dict[str, tuple[int, int]] = {
    **dict.fromkeys(("hidden_size", "n_embd", "d_model"), (1, 2**18)),
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers"), (1, 2**12)),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads",
                     "num_key_value_heads", "num_kv_heads"), (1, 2**14)),
    "head_dim": (1, 2**14),
    "vocab_size": (1, 2**24),
    **dict.fromkeys(("intermediate_size", "n_inner", "ffn_dim", "moe_intermediate_size",
                     "shared_expert_intermediate_size"), (1, 2**20)),
    "max_position_embeddings": (1, 2**32),
    "sliding_window": (0, 2**32),
    **dict.fromkeys(("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                     "v_head_dim"), (1, 2**16)),
    **dict.fromkeys(("num_local_experts", "n_routed_experts", "num_experts",
                     "num_experts_per_tok", "n_shared_experts"), (0, 2**14)),
    "first_k_dense_replace": (0, 2**12),
    "moe_layer_freq": (1, 2**12),
}
# key -> (low, high) for real numbers: finite, strictly between the two.
FLOAT_BOUNDS: dict[str, tuple[float, float]] = {
    "rope_theta": (0.0, 1e15),  # published: 1e4 to 1e8
    "rms_norm_eps": (0.0, 1.0),  # 0 < eps < 1
    "layer_norm_eps": (0.0, 1.0),
    "layer_norm_epsilon": (0.0, 1.0),
}
BOOL_KEYS = ("tie_word_embeddings", "use_sliding_window", "multi_query", "attention_bias",
             "mlp_bias", "qkv_bias")
STR_KEYS = ("model_type", "torch_dtype", "dtype")
MAX_NAME = 128  # model_type, dtype and architecture names: identifiers, never essays


def shown(value: Any) -> str:
    """A value as a message can show it: short, on one line."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**15:
        return f"a {len(str(abs(value)))}-digit number"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int_problem(value: Any, lo: int, hi: int) -> str | None:
    kind = "a positive integer" if lo >= 1 else "a whole number >= 0"
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        return f"must be {kind}, got {shown(value)}"
    if value > hi:
        return f"must be {kind} no larger than {hi:,}, got {shown(value)}"
    return None


def _float_problem(value: Any, lo: float, hi: float) -> str | None:
    what = f"a number above {lo:g} and below {hi:g}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo < value < hi:
        return f"must be {what}, got {shown(value)}"
    return None


def problems(cfg: dict) -> list[tuple[str, str]]:
    """(key, reason) for each value of one config level that is out of type or range.
    A key that is absent or null is not checked here: whether sizing needs it is
    parse_model_config's question."""
    found: list[tuple[str, str]] = []
    for key, (lo, hi) in INT_BOUNDS.items():
        if cfg.get(key) is not None and (why := _int_problem(cfg[key], lo, hi)):
            found.append((key, why))
    floats = {k: cfg.get(k) for k in FLOAT_BOUNDS}
    if isinstance(cfg.get("rope_parameters"), dict):  # transformers 5 nests rope_theta here
        floats["rope_parameters.rope_theta"] = cfg["rope_parameters"].get("rope_theta")
    for key, value in floats.items():
        lo, hi = FLOAT_BOUNDS[key.rpartition(".")[2]]
        if value is not None and (why := _float_problem(value, lo, hi)):
            found.append((key, why))
    for key in BOOL_KEYS:
        if cfg.get(key) is not None and not isinstance(cfg[key], bool):
            found.append((key, f"must be true or false, got {shown(cfg[key])}"))
    for key in STR_KEYS:
        value = cfg.get(key)
        if value is not None and not isinstance(value, str):
            found.append((key, f"must be a string, got {shown(value)}"))
        elif isinstance(value, str) and len(value) > MAX_NAME:
            found.append((key, f"must be at most {MAX_NAME} characters, got {len(value):,}"))
    archs = cfg.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(
            isinstance(a, str) and len(a) <= MAX_NAME for a in archs)):
        found.append(("architectures", f"must be a list of class names (strings of at most "
                                       f"{MAX_NAME} characters), got {shown(archs)}"))
    if cfg.get("layer_types") is not None and not isinstance(cfg["layer_types"], list):
        found.append(("layer_types", f"must be a list, got {shown(cfg['layer_types'])}"))
    return found
