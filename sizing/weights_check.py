"""Does a model's config.json describe the weights beside it? A config edited after the
weights were written (hidden_size changed, a layer count off by a few) plans and dry-runs
as if it were right and fails only when the server loads it, after a candidate exists. The
safetensors headers (read for exact parameter counts anyway) hold every tensor's shape:
compared here with what the config implies, so the lie is found at plan time.

Exact where the layout is known: the input embedding (vocab_size x hidden_size, found by
its name `...embed_tokens.weight`), the number of decoder layers (`...layers.N.`), the
attention and MLP projections of the Llama family (q/k/v/o_proj, gate/up/down_proj), the
output head, and the parameter total of an architecture sizing models exactly. Skipped,
with the reason returned, where the weights cannot be compared exactly: matrices packed by
int4/int8 quantization, tensor names not of that family, a multimodal checkpoint (its vision
tower counts in the total), multi-token-prediction layers beyond the decoder's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from lmiflow.sizing.model_spec import KNOWN_ARCHITECTURES, ModelConfigError, ModelSpec

EMBED = "embed_tokens.weight"
# The count the config implies equals the safetensors total of every bundled snapshot's
# model exactly; buffers saved beside the weights (rotary inv_freq) and fp8 scales add far
# less than 0.1 % to a real model. A wrong layer, expert count, bias or MLP width moves it by
# more.
TOTAL_TOLERANCE = 0.001


def _dims(shape: Sequence[int]) -> str:
    return " x ".join(str(d) for d in shape) or "a scalar"


def compare_with_weights(raw: dict, spec: ModelSpec, shapes: Mapping[str, Sequence[int]],
                         total: int | None = None) -> str | None:
    """Raise ModelConfigError naming the config.json key, its value and what the weights
    hold, at the first disagreement; return why part of the comparison was skipped (None
    when everything was compared). `spec` is the config's own (before exact counts)."""
    key = "config.json:" + ("text_config." if isinstance(raw.get("text_config"), dict) else "")
    skipped: list[str] = []

    def mismatch(name: str, says: object, holds: str) -> ModelConfigError:
        return ModelConfigError(key + name, f"{says}, but the weights hold {holds}")

    embeds = [n for n in shapes if n.endswith(EMBED)]
    if len(embeds) != 1 or len(shapes[embeds[0]]) != 2:
        return ("config.json not compared with the weights: their tensor names are not of "
                "the Llama family (no single ...embed_tokens.weight)")
    embed = embeds[0]
    prefix = embed.removesuffix(EMBED)
    vocab, hidden = shapes[embed]
    shown = f"{embed} is {_dims(shapes[embed])}"
    if hidden != spec.hidden_size:
        raise mismatch("hidden_size", spec.hidden_size, f"{hidden} ({shown})")
    if vocab != spec.vocab_size:
        raise mismatch("vocab_size", spec.vocab_size, f"{vocab} ({shown})")

    layer_re = re.compile(re.escape(prefix) + r"layers\.(\d+)\.")
    found = {int(m.group(1)) for n in shapes if (m := layer_re.match(n))}
    extra = _nextn_layers(raw)
    layers = max(found) + 1 if found else 0
    if not spec.num_layers <= layers <= spec.num_layers + extra:
        raise mismatch("num_hidden_layers", spec.num_layers,
                       f"{layers} decoder layers ({prefix}layers.0 to {prefix}layers."
                       f"{layers - 1})" if layers else f"no {prefix}layers.N tensors")

    packed = spec.quantization in ("int4", "int8")
    known = spec.model_type in KNOWN_ARCHITECTURES
    if packed:
        skipped.append(f"{spec.quantization} checkpoint: its matrices are packed, so their "
                       "shapes and the parameter total say nothing exact")
    elif not known or spec.is_mla:
        skipped.append(f"projections not compared ({spec.model_type} attention is not the "
                       "Llama family's)")
    else:
        _compare_projections(spec, shapes, f"{prefix}layers.", mismatch)
    if not known:  # the output head and total follow the generic layout only roughly
        return "; ".join(skipped) or None
    _compare_head(spec, shapes, key)
    if packed:
        return "; ".join(skipped) or None
    if extra:
        skipped.append("parameter total not compared: the weights hold multi-token-prediction "
                       "layers the decoder does not use")
    elif key.endswith("text_config."):
        skipped.append("parameter total not compared: a multimodal checkpoint's total "
                       "includes its vision tower")
    elif total and abs(total - spec.parameters) > TOTAL_TOLERANCE * total:
        raise ModelConfigError("config.json", f"describes {spec.parameters:,} parameters, but "
                               f"the weights hold {total:,}")
    return "; ".join(skipped) or None


def _nextn_layers(raw: dict) -> int:
    cfg = raw["text_config"] if isinstance(raw.get("text_config"), dict) else raw
    n = cfg.get("num_nextn_predict_layers")
    return n if isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 64 else 0


def _compare_projections(spec: ModelSpec, shapes: Mapping[str, Sequence[int]], layers: str,
                         mismatch) -> None:
    """The first layer's attention, and the first dense MLP, against the config's sizes."""
    heads, kv, head_dim, hidden = (spec.num_attention_heads, spec.num_kv_heads, spec.head_dim,
                                   spec.hidden_size)
    expect = {  # tensor: (shape, config key, what the config says)
        "self_attn.q_proj.weight": ((heads * head_dim, hidden), "num_attention_heads",
                                    f"{heads} (x head_dim {head_dim} = {heads * head_dim} rows)"),
        "self_attn.k_proj.weight": ((kv * head_dim, hidden), "num_key_value_heads",
                                    f"{kv} (x head_dim {head_dim} = {kv * head_dim} rows)"),
        "self_attn.o_proj.weight": ((hidden, heads * head_dim), "num_attention_heads",
                                    f"{heads} (x head_dim {head_dim} = {heads * head_dim} "
                                    "columns)"),
    }
    for tensor, (shape, name, says) in expect.items():
        got = shapes.get(f"{layers}0.{tensor}")
        if got is not None and tuple(got) != shape:
            raise mismatch(name, says, f"{layers}0.{tensor} as {_dims(got)}")
    inter = spec.intermediate_size
    for i in range(spec.num_layers):
        got = shapes.get(f"{layers}{i}.mlp.gate_proj.weight")
        if got is None:
            continue
        if tuple(got) != (inter, hidden):
            raise mismatch("intermediate_size", inter,
                           f"{layers}{i}.mlp.gate_proj.weight as {_dims(got)}")
        return


def _compare_head(spec: ModelSpec, shapes: Mapping[str, Sequence[int]], key: str) -> None:
    heads = [n for n in shapes if n.endswith("lm_head.weight")]
    if not heads and not spec.tie_word_embeddings:
        raise ModelConfigError(key + "tie_word_embeddings", "false, but the weights hold no "
                               "lm_head.weight (the output layer would be left random)")
    for name in heads:
        if tuple(shapes[name]) != (spec.vocab_size, spec.hidden_size):
            raise ModelConfigError(key + "vocab_size", f"{spec.vocab_size} (x hidden_size "
                                   f"{spec.hidden_size}), but the weights hold {name} as "
                                   f"{_dims(shapes[name])}")


def parameter_count(shapes: Mapping[str, Sequence[int]]) -> int:
    return sum(math.prod(s) for s in shapes.values())
