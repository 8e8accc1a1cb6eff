"""What the local model server takes from a model directory's serving.properties (and env).

Pure: reads text, returns a typed result plus the names it ignores, so the rules are testable
without torch. DJL's rule is kept: `option.X` may also come from env `OPTION_X`; the file wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lmiflow import patterns
from lmiflow.serving.engine import EngineOptions
from lmiflow.serving.properties_text import parse_entries

# Keys that steer LMI on a GPU fleet and mean nothing to one CPU process: logged once, ignored.
IGNORED_KEYS = {
    "engine",
    "option.tensor_parallel_degree",
    "option.pipeline_parallel_degree",
    "option.rolling_batch",
    "option.entryPoint",
    "option.entrypoint",
    "option.async_mode",
    "option.model_loading_timeout",
    "option.quantize",
    "option.enable_prefix_caching",
    "option.enable_chunked_prefill",
    "option.kv_cache_dtype",
    "option.output_formatter",
    "option.load_format",
    "option.enforce_eager",
    "option.disable_custom_all_reduce",
    "option.mpi_mode",
}


class OptionError(ValueError):
    """serving.properties holds a value the server cannot use; `key` names the entry."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


@dataclass
class ServerOptions:
    engine: EngineOptions
    model_source: str  # what option.model_id said (or the model dir), for logs
    ignored: list[str] = field(default_factory=list)
    max_new_tokens_default: int = 30  # LMI's default


# The numbers this server accepts: (type, lowest, highest). Planning checks a rendered file
# against them too, so a value the server would refuse at start-up is exit 2 before any
# endpoint exists.
LIMITS: dict[str, tuple[type, float, float]] = {
    "option.max_rolling_batch_size": (int, 1, 1024),
    "option.max_model_len": (int, 16, 10_000_000),
    "option.max_rolling_batch_prefill_tokens": (int, 16, 1_000_000),
    "option.gpu_memory_utilization": (float, 0.05, 1.0),
}
DTYPES = ("auto", "fp32", "fp16", "bf16")


def check_entries(entries: Mapping[str, str]) -> dict[str, int | float | str | bool]:
    """The entries this server reads, typed and range-checked (OptionError naming the key)."""
    out: dict[str, int | float | str | bool] = {}
    for key, (kind, lo, hi) in LIMITS.items():
        if key not in entries:
            continue
        text = entries[key]
        try:
            v = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise OptionError(key, f"{key}={text!r}: expected {what}") from None
        if not lo <= v <= hi:
            raise OptionError(key, f"{key}={v}: the local server accepts {lo:g}..{hi:g}")
        out[key] = v
    dtype = entries.get("option.dtype", "auto")
    if dtype not in DTYPES:
        raise OptionError("option.dtype", f"option.dtype={dtype}: the local server takes "
                          + ", ".join(DTYPES))
    trust = entries.get("option.trust_remote_code", "false").lower()
    if trust not in ("true", "false"):
        raise OptionError("option.trust_remote_code",
                          f"option.trust_remote_code={trust}: expected true or false")
    out["option.dtype"], out["option.trust_remote_code"] = dtype, trust == "true"
    return out


def env_entries(environ: Mapping[str, str]) -> dict[str, str]:
    """OPTION_MAX_MODEL_LEN=8 -> option.max_model_len=8 (DJL's env form of an option)."""
    return {
        "option." + k[len("OPTION_"):].lower(): v
        for k, v in environ.items()
        if k.startswith("OPTION_") and len(k) > len("OPTION_")
    }


def resolve_model_path(model_dir: Path, model_id: str | None) -> str:
    """Absolute path, path relative to the model dir, or a Hub id (left for transformers)."""
    if not model_id:
        return str(model_dir)
    if model_id.startswith("s3://"):
        raise OptionError("option.model_id",
                          f"option.model_id={model_id}: s3:// locations need SageMaker")
    p = Path(model_id).expanduser()
    candidate = p if p.is_absolute() else model_dir / p
    if candidate.exists():
        return str(candidate.resolve())
    if (p.is_absolute() or model_id.startswith(".")
            or not patterns.matches(patterns.HUB_ID, model_id)):
        raise OptionError("option.model_id",
                          f"option.model_id={model_id}: no such directory ({candidate})")
    return model_id  # a Hub id: transformers resolves it (from its cache when offline)


def load_options(model_dir: Path, environ: Mapping[str, str] | None = None) -> ServerOptions:
    model_dir = Path(model_dir)
    props = model_dir / "serving.properties"
    file_entries = parse_entries(props.read_text()) if props.exists() else {}
    entries = {**env_entries(environ or {}), **file_entries}

    known = {
        "option.model_id", "option.dtype", "option.max_rolling_batch_size", "option.max_model_len",
        "option.max_rolling_batch_prefill_tokens", "option.trust_remote_code", "option.revision",
        "option.gpu_memory_utilization",
    }
    ignored = sorted(k for k in entries if k in IGNORED_KEYS or k not in known)

    checked = check_entries(entries)
    model_id = entries.get("option.model_id")
    engine = EngineOptions(
        model_path=resolve_model_path(model_dir, model_id),
        dtype=checked["option.dtype"],
        max_rolling_batch_size=checked.get("option.max_rolling_batch_size") or 32,
        max_model_len=checked.get("option.max_model_len"),
        max_batch_tokens=checked.get("option.max_rolling_batch_prefill_tokens"),
        trust_remote_code=checked["option.trust_remote_code"],
        revision=entries.get("option.revision") or None,
        gpu_memory_utilization=checked.get("option.gpu_memory_utilization"),
    )
    return ServerOptions(engine=engine, model_source=model_id or str(model_dir), ignored=ignored)
