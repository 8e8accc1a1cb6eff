"""What sizing needs to know about a model, read from its Hugging Face `config.json`.

Parameter counts are derived from the architecture (no weights needed), so a plan works
offline from a config snapshot. When exact counts from safetensors metadata are at hand the
caller passes them in and they win (`parameter_source == "safetensors"`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from lmiflow.sizing.config_bounds import problems, shown
from pydantic import BaseModel, Field


class ModelConfigError(ValueError):
    """config.json is missing, unreadable or lacks a field sizing needs."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


# Architectures whose parameter layout is modelled exactly; anything else goes through the
# generic path and is labelled an estimate.
KNOWN_ARCHITECTURES = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "qwen2_moe",
    "qwen3_moe",
    "gemma2",
    "phi3",
    "deepseek_v3",
    "deepseek_v2",
}

Quantization = Literal["fp8", "int8", "int4"]


class ModelSpec(BaseModel):
    """The shape of a decoder-only transformer, as far as memory is concerned."""

    model_type: str
    architecture: str | None = None
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    max_position_embeddings: int | None = None
    # Weights dtype as stored ("float16", "bfloat16", "float32") and pre-quantization, if any.
    torch_dtype: str | None = None
    quantization: Quantization | None = None
    quant_group_size: int | None = None
    # Attention variants.
    mla_kv_lora_rank: int | None = None
    mla_rope_head_dim: int | None = None
    sliding_window: int | None = None
    sliding_window_layers: int = 0  # how many layers use the window (the rest see everything)
    # Mixture of experts.
    num_experts: int = 0
    experts_per_token: int = 0
    parameters: int = Field(description="All parameters, every expert counted.")
    active_parameters: int = Field(description="Parameters used per token (MoE: routed top-k).")
    # Parameters in layers that a weight-only quantization leaves in 16 bit (embeddings, head,
    # norms, router): they do not shrink with int4/int8/fp8.
    unquantized_parameters: int = 0
    parameter_source: Literal["config", "safetensors"] = "config"
    estimate_note: str | None = Field(
        default=None, description="Set when the architecture is not modelled exactly."
    )

    @property
    def is_mla(self) -> bool:
        return self.mla_kv_lora_rank is not None

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def kv_elements_per_token_layer(self) -> int:
        """K and V elements one token stores in one layer, whole model (unsharded)."""
        if self.is_mla:
            # MLA caches one compressed latent plus the decoupled RoPE key: no x2 for K and V.
            return self.mla_kv_lora_rank + self.mla_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim


def _req(cfg: dict, *names: str) -> Any:
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    raise ModelConfigError(f"config.json:{names[0]}", "missing; sizing needs it")


def _pos_int(cfg: dict, *names: str) -> int:
    v = _req(cfg, *names)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ModelConfigError(f"config.json:{names[0]}",
                               f"must be a positive integer, got {shown(v)}")
    return v


def _check_bounds(raw: dict, cfg: dict) -> None:
    """The first value out of type or range, at the top level or in text_config."""
    levels = [("", raw)] + ([("text_config.", cfg)] if cfg is not raw else [])
    for prefix, level in levels:
        for key, reason in problems(level):
            raise ModelConfigError(f"config.json:{prefix}{key}", reason)


def _group_size(value: Any) -> int | None:
    """A quantization group size: an integer (some configs write it as a string); -1 or
    absent means per channel, which sizes like the default group."""
    if value is None or value == -1:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**20:
        raise ModelConfigError("config.json:quantization_config.group_size",
                               f"must be a positive integer, got {shown(value)}")
    return value


def _text_config(cfg: dict) -> dict:
    # Multimodal wrappers (Llava, Gemma-3, Mllama) keep the language model in text_config.
    return cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg


def _quantization(cfg: dict) -> tuple[Quantization | None, int | None]:
    q = cfg.get("quantization_config")
    if not isinstance(q, dict):
        return None, None
    method = str(q.get("quant_method", "")).lower()
    bits = q.get("bits") or q.get("w_bit")
    group = _group_size(q.get("group_size") or q.get("q_group_size"))
    if method in ("fp8", "fbgemm_fp8"):
        return "fp8", None
    if method == "bitsandbytes":
        return ("int4" if q.get("load_in_4bit") else "int8"), 64
    if method == "compressed-tensors":
        fmt = str(q.get("format", "")).lower()
        if "float" in fmt or "fp8" in fmt:
            return "fp8", None
        groups = q.get("config_groups")
        for grp in (groups.values() if isinstance(groups, dict) else ()):
            w = grp.get("weights") if isinstance(grp, dict) else None
            w = w if isinstance(w, dict) else {}
            nbits = w.get("num_bits")
            if w.get("type") == "float" and nbits == 8:
                return "fp8", None
            if nbits in (4, 8):
                return ("int4" if nbits == 4 else "int8"), _group_size(w.get("group_size")) or 128
        return "int8", None
    if bits in (4, 8) or method in ("awq", "gptq", "marlin", "hqq", "aqlm"):
        return ("int4" if (bits or 4) == 4 else "int8"), group or 128
    if method == "mxfp4":
        return "int4", 32
    return None, None


def parse_model_config(raw: dict) -> ModelSpec:
    """ModelSpec from a config.json dict; raises ModelConfigError naming the missing field."""
    if not isinstance(raw, dict):
        raise ModelConfigError("config.json", "must be a JSON object")
    cfg = _text_config(raw)
    _check_bounds(raw, cfg)
    model_type = str(cfg.get("model_type") or raw.get("model_type") or "unknown")
    archs = raw.get("architectures") or cfg.get("architectures") or [None]
    hidden = _pos_int(cfg, "hidden_size", "n_embd", "d_model")
    layers = _pos_int(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _pos_int(cfg, "num_attention_heads", "n_head", "num_heads")
    kv_key = next((k for k in ("num_key_value_heads", "num_kv_heads") if cfg.get(k) is not None),
                  None)
    kv_heads = _pos_int(cfg, kv_key) if kv_key else heads
    if cfg.get("multi_query") is True:  # Falcon/StarCoder style MQA
        kv_heads = 1
    if kv_heads > heads or heads % kv_heads:
        raise ModelConfigError(f"config.json:{kv_key}", f"{kv_heads} key/value heads cannot "
                               f"serve {heads} attention heads (needs a divisor of {heads})")
    if cfg.get("head_dim") is not None:
        head_dim = _pos_int(cfg, "head_dim")
    elif hidden % heads:
        raise ModelConfigError("config.json:hidden_size", f"{hidden} is not divisible by "
                               f"num_attention_heads {heads} (and no head_dim is given)")
    else:
        head_dim = hidden // heads
    vocab = _pos_int(cfg, "vocab_size")
    intermediate = cfg.get("intermediate_size") or cfg.get("n_inner") or cfg.get("ffn_dim")
    if not intermediate:
        if model_type in KNOWN_ARCHITECTURES:
            raise ModelConfigError("config.json:intermediate_size", "missing; sizing needs it")
        intermediate = 4 * hidden
    tie = bool(cfg.get("tie_word_embeddings", raw.get("tie_word_embeddings",
                                                      model_type in ("gemma", "gemma2"))))
    quant, group = _quantization(raw) if "quantization_config" in raw else _quantization(cfg)

    # Sliding window: Qwen2 ships the key with use_sliding_window false (ignored);
    # Gemma-2 windows every other layer; Mistral/Phi-3 window every layer.
    window = cfg.get("sliding_window")
    window_layers = 0
    if window and cfg.get("use_sliding_window", True) is not False:
        if model_type == "gemma2":
            window_layers = (layers + 1) // 2
        elif isinstance(cfg.get("layer_types"), list):
            window_layers = sum(1 for t in cfg["layer_types"] if "sliding" in str(t))
        else:
            window_layers = layers
    else:
        window = None

    counts = _count_parameters(cfg, model_type, hidden, layers, heads, kv_heads, head_dim,
                               intermediate, vocab, tie)
    known = model_type in KNOWN_ARCHITECTURES
    mla = model_type in ("deepseek_v2", "deepseek_v3") and cfg.get("kv_lora_rank")
    return ModelSpec(
        model_type=model_type,
        architecture=archs[0],
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        intermediate_size=int(intermediate),
        vocab_size=vocab,
        tie_word_embeddings=tie,
        max_position_embeddings=cfg.get("max_position_embeddings"),
        torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or raw.get("torch_dtype") or "")
        or None,
        quantization=quant,
        quant_group_size=group,
        mla_kv_lora_rank=int(cfg["kv_lora_rank"]) if mla else None,
        mla_rope_head_dim=_pos_int(cfg, "qk_rope_head_dim") if mla else None,
        sliding_window=int(window) if window else None,
        sliding_window_layers=window_layers,
        num_experts=counts["experts"],
        experts_per_token=counts["experts_per_token"],
        parameters=counts["total"],
        active_parameters=counts["active"],
        unquantized_parameters=counts["unquantized"],
        estimate_note=None if known else (
            f"architecture {model_type!r} is not modelled exactly: parameters and KV cache are "
            "estimated from the generic decoder layout (gated MLP, no biases)"),
    )


def _count_parameters(cfg, model_type, hidden, layers, heads, kv_heads, head_dim, inter,
                      vocab, tie) -> dict[str, int]:
    """Parameters from the architecture, layer by layer (embeddings, attention, MLP/MoE, norms).

    Written by hand because no library counts parameters from a config without building the
    model (transformers would need torch and gigabytes of meta tensors per architecture).
    """
    # Attention.
    if model_type in ("deepseek_v2", "deepseek_v3") and cfg.get("kv_lora_rank"):
        q_lora = cfg.get("q_lora_rank")
        nope, rope = _pos_int(cfg, "qk_nope_head_dim"), _pos_int(cfg, "qk_rope_head_dim")
        v_dim, kv_lora = _pos_int(cfg, "v_head_dim"), cfg["kv_lora_rank"]
        q_head = nope + rope
        if q_lora:
            q = hidden * q_lora + q_lora + q_lora * heads * q_head
        else:
            q = hidden * heads * q_head
        kv = hidden * (kv_lora + rope) + kv_lora + kv_lora * heads * (nope + v_dim)
        attn = q + kv + heads * v_dim * hidden
    else:
        q_out, kv_out = heads * head_dim, kv_heads * head_dim
        attn = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
        if model_type in ("qwen2", "qwen2_moe") or cfg.get("qkv_bias"):
            attn += q_out + 2 * kv_out
        elif cfg.get("attention_bias"):
            attn += q_out + 2 * kv_out + hidden
        if model_type in ("qwen3", "qwen3_moe"):
            attn += 2 * head_dim  # q_norm, k_norm
    norms = (4 if model_type == "gemma2" else 2) * hidden
    mlp_bias = bool(cfg.get("mlp_bias"))

    def mlp(i: int) -> int:
        return 3 * hidden * i + ((2 * i + hidden) if mlp_bias else 0)

    dense = mlp(inter)
    # Mixture of experts.
    experts = int(cfg.get("num_local_experts") or cfg.get("n_routed_experts")
                  or cfg.get("num_experts") or 0)
    top_k = int(cfg.get("num_experts_per_tok") or 0)
    if 0 < experts < top_k:  # no experts under these names: sized as a dense model
        raise ModelConfigError("config.json:num_experts_per_tok",
                               f"{top_k} is more than the model's {experts} experts")
    moe_total = moe_active = 0
    moe_layers = 0
    if experts:
        e_inter = cfg.get("moe_intermediate_size") or inter
        router = hidden * experts
        if model_type == "deepseek_v3":
            router += experts  # e_score_correction_bias
        shared = 0
        if cfg.get("n_shared_experts"):
            shared = mlp(e_inter * cfg["n_shared_experts"])
        elif cfg.get("shared_expert_intermediate_size"):
            shared = mlp(cfg["shared_expert_intermediate_size"]) + hidden  # + shared_expert_gate
        moe_total = experts * mlp(e_inter) + shared + router
        moe_active = top_k * mlp(e_inter) + shared + router
        first_dense = int(cfg.get("first_k_dense_replace") or 0)
        freq = int(cfg.get("moe_layer_freq") or 1)
        moe_layers = sum(1 for i in range(first_dense, layers) if i % freq == 0)
    dense_layers = layers - moe_layers
    per_dense = attn + dense + norms
    per_moe_total = attn + moe_total + norms
    per_moe_active = attn + moe_active + norms
    embed = vocab * hidden * (1 if tie else 2)
    total = dense_layers * per_dense + moe_layers * per_moe_total + embed + hidden
    active = dense_layers * per_dense + moe_layers * per_moe_active + embed + hidden
    routers = moe_layers * hidden * experts
    unquantized = embed + hidden + layers * norms + routers
    return {"total": total, "active": active, "unquantized": unquantized,
            "experts": experts, "experts_per_token": top_k}


def read_config_file(path: str | Path) -> dict:
    """config.json from a directory or a file path."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ModelConfigError("model", f"{p} not found (need a directory with config.json)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelConfigError("model", f"{p} is not valid JSON: {exc}") from None
    except ValueError:  # an integer of more digits than Python converts (4300)
        raise ModelConfigError("model", f"{p} holds a number too long to be a model's "
                                        "setting") from None
    except RecursionError:  # json's C parser recurses once per nesting level
        raise ModelConfigError("model", f"{p} is nested too deeply to be a model config") from None
    except OSError as exc:
        raise ModelConfigError("model", f"{p} cannot be read: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ModelConfigError("model", f"{p} must hold a JSON object")
    return data


def with_exact_counts(spec: ModelSpec, safetensors_total: int) -> ModelSpec:
    """Replace the derived total with the exact safetensors count (active scales with it)."""
    ratio = spec.active_parameters / spec.parameters if spec.parameters else 1.0
    return spec.model_copy(update={
        "parameters": int(safetensors_total),
        "active_parameters": round(safetensors_total * ratio),
        "parameter_source": "safetensors",
    })
