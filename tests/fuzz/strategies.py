"""What users write, generated: model config.json files and deployment configs that start
from valid ones and change a few fields to edge values, wrong types, NaN and infinities,
unicode and very long strings, or replace the whole file with something else."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hypothesis import strategies as st
from lmiflow.sizing.config_bounds import BOOL_KEYS, FLOAT_BOUNDS, INT_BOUNDS, STR_KEYS
from pydantic import BaseModel

from lmiflow.spec import DeploymentSpec

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOTS = sorted(p.parent for p in (ROOT / "configs" / "models").glob("*/config.json"))

# A tiny Llama (the demo model's sizes): plans on any target, so a changed field runs the
# planner and the rendering too, not only the parser.
TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": True, "torch_dtype": "float32"}

EDGES = st.sampled_from([
    0, -1, 1, 2, 3, 7, 2**31, 2**53 + 1, 2**63, 10**40, -(10**40), 10**400,
    math.nan, math.inf, -math.inf, 0.5, 1.5, -0.0, 1e-300, 1e300, 5e-324,
    True, False, None, "", " ", "0", "1e3", "NaN", "inf", "\x00", "ℵ₀", "😀" * 3, "a\nb",
    [], [1], {}, {"a": 1},
])


def long_text(min_size: int = 200, max_size: int = 50_000) -> st.SearchStrategy[str]:
    """Very long strings, cheaply: one character repeated (generating 50k random characters
    per example would dominate the run time)."""
    return st.builds(lambda c, n: c * n, st.characters(codec="utf-8"),
                     st.integers(min_size, max_size))


VALUES = st.one_of(
    EDGES,
    st.integers(-(2**70), 2**70),
    st.integers(0, 100_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    long_text(),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=2),
)

# ---- model config.json ------------------------------------------------------------------------

MODEL_KEYS = sorted({*INT_BOUNDS, *FLOAT_BOUNDS, *BOOL_KEYS, *STR_KEYS, "architectures",
                     "layer_types", "quantization_config", "rope_parameters", "rope_scaling",
                     "num_nextn_predict_layers", "text_config"})
QUANT = st.fixed_dictionaries({}, optional={
    "quant_method": st.one_of(st.sampled_from(["fp8", "awq", "gptq", "bitsandbytes",
                                               "compressed-tensors", "mxfp4", "other"]), VALUES),
    "bits": VALUES, "group_size": VALUES, "load_in_4bit": VALUES, "format": VALUES,
    "config_groups": st.one_of(VALUES, st.dictionaries(st.text(max_size=3), st.one_of(
        VALUES, st.fixed_dictionaries({"weights": st.one_of(VALUES, st.fixed_dictionaries(
            {}, optional={"num_bits": VALUES, "type": VALUES, "group_size": VALUES}))})),
        max_size=2))})


def _model_value(key: str) -> st.SearchStrategy:
    if key == "quantization_config":
        return st.one_of(QUANT, VALUES)
    if key == "rope_parameters":
        return st.one_of(st.fixed_dictionaries({"rope_theta": VALUES}), VALUES)
    if key == "text_config":
        return st.one_of(st.just(dict(TINY)), VALUES)
    return VALUES


@st.composite
def model_configs(draw) -> object:
    """A config.json's parsed content: a valid base with a few keys changed or added, some
    wrapped in a multimodal text_config; or any JSON value at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.recursive(VALUES, lambda inner: st.lists(inner, max_size=3)
                                 | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                                 max_leaves=8))
    snapshots = [json.loads((d / "config.json").read_text()) for d in SNAPSHOTS]
    cfg = dict(draw(st.sampled_from([TINY, TINY, *snapshots])))
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.one_of(st.sampled_from(MODEL_KEYS), st.text(max_size=12)))
        if draw(st.integers(0, 5)) == 0:
            cfg.pop(key, None)
        else:
            cfg[key] = draw(_model_value(key))
    if draw(st.integers(0, 6)) == 0:
        cfg = {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
               "text_config": cfg}
    return cfg


def config_json_text(cfg: object) -> str:
    """As json.dumps writes it: NaN and Infinity as Python's json reads them back."""
    return json.dumps(cfg, allow_nan=True)


@st.composite
def tensor_shapes(draw, cfg: dict) -> dict[str, list]:
    """The tensor shapes of a Llama with cfg's sizes (when they are sizes), some changed."""
    def size(key: str, default: int) -> int:
        v = cfg.get(key, default)
        return v if isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096 else default

    hidden, vocab = size("hidden_size", 64), size("vocab_size", 512)
    heads, kv, head_dim = (size("num_attention_heads", 4), size("num_key_value_heads", 2),
                           size("head_dim", 16))
    inter, layers = size("intermediate_size", 128), min(size("num_hidden_layers", 2), 8)
    shapes: dict[str, list] = {"model.embed_tokens.weight": [vocab, hidden],
                               "model.norm.weight": [hidden]}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": [heads * head_dim, hidden],
                   p + "self_attn.k_proj.weight": [kv * head_dim, hidden],
                   p + "self_attn.v_proj.weight": [kv * head_dim, hidden],
                   p + "self_attn.o_proj.weight": [hidden, heads * head_dim],
                   p + "mlp.gate_proj.weight": [inter, hidden],
                   p + "mlp.up_proj.weight": [inter, hidden],
                   p + "mlp.down_proj.weight": [hidden, inter]}
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(sorted(shapes)))
        shapes[name] = draw(st.one_of(st.lists(st.integers(0, 5000), max_size=3), VALUES))
    return shapes


def safetensors_bytes(shapes: dict[str, object]) -> bytes:
    """A safetensors header with these shapes (the tensors' bytes are never read at plan
    time, so none follow)."""
    header = json.dumps({n: {"dtype": "F32", "shape": s, "data_offsets": [0, 0]}
                         for n, s in shapes.items()}).encode()
    return len(header).to_bytes(8, "little") + header


# ---- deployment configs -----------------------------------------------------------------------


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted field of the config, from the model itself: a new field is fuzzed too."""
    out = []
    for name, f in model.model_fields.items():
        args = (*getattr(f.annotation, "__args__", ()), f.annotation)
        sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None and getattr(f.annotation, "__origin__", None) is not list:
            out += [prefix + name, *_fields(sub, prefix + name + ".")]
        else:
            out.append(prefix + name)
    return out


CONFIG_FIELDS = sorted(set(_fields(DeploymentSpec)) - {"gates"})
SAGEMAKER = {"kind": "sagemaker", "region": "us-east-1",
             "role_arn": "arn:aws:iam::123456789012:role/SageMakerExecution",
             "s3_uri": "s3://my-bucket/models/"}
GATE = st.fixed_dictionaries(
    {"metric": st.one_of(st.sampled_from(["ttft_ms", "tpot_ms", "itl_ms", "e2e_ms",
                                          "error_rate", "output_tokens_per_s", "goodput",
                                          "requests_per_min", "usd_per_1m_output_tokens"]),
                         VALUES),
     "threshold": st.one_of(st.floats(allow_nan=True, allow_infinity=True), VALUES)},
    optional={"stat": st.one_of(st.sampled_from(["p50", "p95", "p99", "mean", "value"]), VALUES),
              "op": st.one_of(st.sampled_from(["<", "<=", ">", ">="]), VALUES),
              "concurrency": st.one_of(st.integers(-2, 10), VALUES)})


def _set(data: dict, dotted: str, value: object) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


@st.composite
def deploy_configs(draw, model_dir: str) -> object:
    """A deployment config's parsed content: the local demo's shape (or a SageMaker one) on
    the tiny model, with a few fields changed, gates generated; or any YAML value at all."""
    if draw(st.integers(0, 11)) == 0:
        return draw(st.recursive(VALUES, lambda inner: st.lists(inner, max_size=3)
                                 | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                                 max_leaves=8))
    data = {"name": "fuzz-demo", "model": {"id": model_dir, "dtype": "fp32"},
            "workload": {"max_input_tokens": 256, "max_output_tokens": 32, "concurrency": 2},
            "target": {"kind": "local"},
            "smoke_test": {"prompt": "Hello", "max_new_tokens": 8},
            "benchmark": {"concurrency": [1, 2], "requests": 4, "input_tokens": 32,
                          "max_new_tokens": 16}}
    if draw(st.integers(0, 3)) == 0:
        data["target"] = dict(SAGEMAKER)
        data["model"] = {"id": str(ROOT / "configs" / "models" / "llama-3.1-8b"),
                         "dtype": "bf16"}
    if draw(st.booleans()):
        data["gates"] = draw(st.lists(GATE, max_size=3))
    for _ in range(draw(st.integers(0, 4))):
        path = draw(st.one_of(st.sampled_from(CONFIG_FIELDS),
                              st.text(min_size=1, max_size=10)))
        _set(data, path, draw(VALUES))
    return data
