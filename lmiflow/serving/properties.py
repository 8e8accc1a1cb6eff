"""The typed LMI `serving.properties`: one model, rendered to the file DJL Serving reads and parsed
back, plus the `OPTION_*` environment form for env-only packaging.

Why typed: the file is where a plan (shards, batch, context, dtype) becomes the container's
behaviour; a misspelt key or a value LMI v15 dropped (`lmi-dist`) would only show up as a failed
endpoint twenty minutes later. What each LMI release accepts, and so which keys a plan
renders for it, is in lmiflow.serving.images (with sources) and lmiflow.serving.plan_properties;
this module is the file's grammar:

- `option.<x>` <-> env `OPTION_<X>`; top-level server keys `<x>` <-> `SERVING_<X>`; the file
  wins over env. For env, `engine=Python` needs nothing (LMI uses Python when a model id is
  given) and `engine=MPI` is `OPTION_MPI_MODE=true` (docs: lmi/conceptual_guide/lmi_engine.md).
- DJL loads the file with java.util.Properties: a backslash is an escape and a trailing
  backslash joins the next line into the value, so values with `\\` are rejected here too.
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmiflow import patterns
from lmiflow.serving.properties_text import check_entry, parse_entries, render_entries

logger = logging.getLogger(__name__)

REMOVED_ROLLING_BATCH = ("lmi-dist", "scheduler")
# Server-level keys (no `option.` prefix) that LMI documents for serving.properties.
TOP_LEVEL_KEYS = frozenset(
    {
        "engine",
        "job_queue_size",
        "batch_size",
        "max_batch_delay",
        "max_idle_time",
        "minWorkers",
        "maxWorkers",
        "gpu.minWorkers",
        "gpu.maxWorkers",
        "load_on_devices",
        "log_request_metric",
        "required_memory_mb",
    }
)



class TrustRemoteCodeWarning(UserWarning):
    """The model's own Python code will run inside the serving container."""


def check_value(key: str, value: str) -> None:
    """Reject what could inject a line or a key, or what DJL's Java-properties reader would
    change (backslash escapes, surrounding whitespace that it strips)."""
    check_entry(key, value)
    if "\\" in value:
        raise ValueError(f"value of {key}: backslashes are not allowed (Java properties escape)")
    if value != value.strip():
        raise ValueError(f"value of {key}: leading or trailing whitespace would be stripped")
    if not value.isascii():
        raise ValueError(f"value of {key}: only ASCII (Java reads properties files as ISO-8859-1)")


def check_key(key: str) -> None:
    """Keys are `option.<name>` or a known server-level key."""
    check_entry(key, "")
    if key.startswith("option."):
        if len(key) == len("option."):
            raise ValueError(f"key {key!r}: option name missing after 'option.'")
        return
    if key not in TOP_LEVEL_KEYS:
        raise ValueError(
            f"key {key!r}: must start with 'option.' or be one of {sorted(TOP_LEVEL_KEYS)}"
        )


def fmt(value: object) -> str:
    """A typed value as the file writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


class ServingProperties(BaseModel):
    """LMI options lmiflow sets, each mapped to its serving.properties key in `_KEYS`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)

    engine: Literal["Python", "MPI"] = Field(
        default="Python", description="Python for vLLM; MPI for TensorRT-LLM."
    )
    model_id: str | None = Field(
        default=None,
        description="Hub id, s3:// prefix or local path; empty when weights sit in the model dir.",
    )
    revision: str | None = None
    trust_remote_code: bool = Field(
        default=False, description="Run the model repository's own code. Off unless set."
    )
    entry_point: str | None = Field(default=None, description="option.entryPoint")
    async_mode: bool | None = None
    rolling_batch: Literal["auto", "vllm", "trtllm", "disable"] | None = None
    tensor_parallel_degree: int | Literal["max"] | None = None
    pipeline_parallel_degree: int | None = Field(default=None, ge=1)
    max_rolling_batch_size: int | None = Field(default=None, ge=1)
    max_model_len: int | None = Field(default=None, ge=1)
    max_rolling_batch_prefill_tokens: int | None = Field(default=None, ge=1)
    enable_chunked_prefill: bool | None = None
    dtype: Literal["fp16", "bf16", "fp32", "auto", "float16", "bfloat16", "float32"] | None = \
        Field(default=None, description="LMI's words (fp16, bf16, fp32, auto); TensorRT-LLM's "
              "LLM API images take TensorRT-LLM's own (float16, bfloat16, float32, auto).")
    quantize: str | None = None
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] | None = Field(
        default=None, description="vLLM's KV-cache dtype (option.kv_cache_dtype).")
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    mpi_mode: bool | None = Field(default=None, description="TensorRT-LLM 0.31.0-0.32.0.")
    max_input_len: int | None = Field(default=None, ge=1, description="TensorRT-LLM.")
    max_output_len: int | None = Field(default=None, ge=1, description="TensorRT-LLM toolkit.")
    max_seq_len: int | None = Field(default=None, ge=1, description="TensorRT-LLM LLM API.")
    max_num_tokens: int | None = Field(default=None, ge=1, description="TensorRT-LLM.")
    kv_cache_free_gpu_mem_fraction: float | None = Field(
        default=None, gt=0, le=1, description="TensorRT-LLM toolkit: KV share of free memory.")
    free_gpu_memory_fraction: float | None = Field(
        default=None, gt=0, le=1, description="TensorRT-LLM LLM API: KV share of free memory.")
    enable_kv_cache_reuse: bool | None = None
    enable_block_reuse: bool | None = None
    quant_algo: str | None = Field(default=None, description="TensorRT-LLM LLM API, e.g. FP8.")
    kv_cache_quant_algo: str | None = None
    model_loading_timeout: int | None = Field(default=None, ge=1, description="seconds")
    extra: dict[str, str] = Field(
        default_factory=dict, description="Other entries, e.g. option.enable_prefix_caching."
    )

    @field_validator("rolling_batch", mode="before")
    @classmethod
    def _removed_backends(cls, v: object) -> object:
        if isinstance(v, str) and v in REMOVED_ROLLING_BATCH:
            raise ValueError(
                f"option.rolling_batch={v} is gone from LMI v15; use vllm (async mode) or trtllm"
            )
        return v

    @field_validator("tensor_parallel_degree")
    @classmethod
    def _tp(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1 or 'max'")
        return v

    @field_validator("quantize")
    @classmethod
    def _quantize(cls, v: str | None) -> str | None:
        if v is not None and not patterns.matches(patterns.LOWER_NAME, v):
            raise ValueError("lower-case name such as fp8 or bitsandbytes")
        return v

    @field_validator("quant_algo", "kv_cache_quant_algo")
    @classmethod
    def _quant_algo(cls, v: str | None) -> str | None:
        if v is not None and not patterns.matches(patterns.UPPER_NAME, v):
            raise ValueError("upper-case TensorRT-LLM QuantAlgo name such as FP8")
        return v

    @field_validator("revision")
    @classmethod
    def _revision(cls, v: str | None) -> str | None:
        if v is not None and not patterns.matches(patterns.REVISION, v):
            raise ValueError("branch, tag or commit: letters, digits, '_', '.', '-', '/'")
        return v

    @field_validator("entry_point")
    @classmethod
    def _entry(cls, v: str | None) -> str | None:
        if v is not None and not patterns.matches(patterns.MODULE_NAME, v):
            raise ValueError("a module name such as djl_python.lmi_vllm.vllm_async_service")
        return v

    @field_validator("model_id")
    @classmethod
    def _model_id(cls, v: str | None) -> str | None:
        if v is not None:
            if not v:
                raise ValueError("must not be empty (leave it out instead)")
            check_value("option.model_id", v)
        return v

    @field_validator("extra")
    @classmethod
    def _extra(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            check_key(key)
            if key in FIELD_BY_KEY:
                raise ValueError(f"key {key!r}: set the typed field {FIELD_BY_KEY[key]!r}")
            if not value:
                raise ValueError(f"value of {key}: empty")
            check_value(key, value)
        return v

    @model_validator(mode="after")
    def _consistency(self) -> ServingProperties:
        if self.rolling_batch == "trtllm" and self.engine != "MPI" and not self.mpi_mode:
            raise ValueError("option.rolling_batch=trtllm needs engine=MPI or option.mpi_mode")
        if self.async_mode and self.rolling_batch not in (None, "disable"):
            raise ValueError("option.async_mode=true needs option.rolling_batch=disable")
        if self.trust_remote_code:
            msg = "option.trust_remote_code=true: the model repository's own code will run"
            logger.warning(msg)
            warnings.warn(msg, TrustRemoteCodeWarning, stacklevel=2)
        return self

    def entries(self) -> dict[str, str]:
        """Key -> text, in the file's order (typed keys first, then extras as given)."""
        out: dict[str, str] = {}
        for field, key in _KEYS:
            value = getattr(self, field)
            if value is not None:
                out[key] = fmt(value)
        out.update(self.extra)
        for key, value in out.items():
            check_value(key, value)
        return out


# Field -> key, in render order. trust_remote_code is always written: explicit "off".
_KEYS: tuple[tuple[str, str], ...] = (
    ("engine", "engine"),
    ("mpi_mode", "option.mpi_mode"),
    ("model_id", "option.model_id"),
    ("revision", "option.revision"),
    ("trust_remote_code", "option.trust_remote_code"),
    ("entry_point", "option.entryPoint"),
    ("async_mode", "option.async_mode"),
    ("rolling_batch", "option.rolling_batch"),
    ("tensor_parallel_degree", "option.tensor_parallel_degree"),
    ("pipeline_parallel_degree", "option.pipeline_parallel_degree"),
    ("max_rolling_batch_size", "option.max_rolling_batch_size"),
    ("max_model_len", "option.max_model_len"),
    ("max_rolling_batch_prefill_tokens", "option.max_rolling_batch_prefill_tokens"),
    ("enable_chunked_prefill", "option.enable_chunked_prefill"),
    ("dtype", "option.dtype"),
    ("quantize", "option.quantize"),
    ("kv_cache_dtype", "option.kv_cache_dtype"),
    ("gpu_memory_utilization", "option.gpu_memory_utilization"),
    ("max_input_len", "option.max_input_len"),
    ("max_output_len", "option.max_output_len"),
    ("max_seq_len", "option.max_seq_len"),
    ("max_num_tokens", "option.max_num_tokens"),
    ("kv_cache_free_gpu_mem_fraction", "option.kv_cache_free_gpu_mem_fraction"),
    ("free_gpu_memory_fraction", "option.free_gpu_memory_fraction"),
    ("enable_kv_cache_reuse", "option.enable_kv_cache_reuse"),
    ("enable_block_reuse", "option.enable_block_reuse"),
    ("quant_algo", "option.quant_algo"),
    ("kv_cache_quant_algo", "option.kv_cache_quant_algo"),
    ("model_loading_timeout", "option.model_loading_timeout"),
)
FIELD_BY_KEY = {key: field for field, key in _KEYS}
_BOOL_FIELDS = {"trust_remote_code", "async_mode", "enable_chunked_prefill", "mpi_mode",
                "enable_kv_cache_reuse", "enable_block_reuse"}
_INT_FIELDS = {
    "pipeline_parallel_degree",
    "max_rolling_batch_size",
    "max_model_len",
    "max_rolling_batch_prefill_tokens",
    "max_input_len",
    "max_output_len",
    "max_seq_len",
    "max_num_tokens",
    "model_loading_timeout",
}
_FLOAT_FIELDS = {"gpu_memory_utilization", "kv_cache_free_gpu_mem_fraction",
                 "free_gpu_memory_fraction"}


def render(props: ServingProperties) -> str:
    """The serving.properties text; parse(render(p)) == p."""
    return render_entries(props.entries())


def typed_value(field: str, key: str, text: str) -> object:
    if field in _BOOL_FIELDS:
        low = text.lower()
        if low not in ("true", "false"):
            raise ValueError(f"value of {key}: true or false, got {text!r}")
        return low == "true"
    if field == "tensor_parallel_degree" and text == "max":
        return text
    if field in _INT_FIELDS:
        if not text.isdigit():
            raise ValueError(f"value of {key}: a whole number, got {text!r}")
        return int(text)
    if field == "tensor_parallel_degree":
        return text if text == "max" else typed_value("max_model_len", key, text)
    if field in _FLOAT_FIELDS:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"value of {key}: a number, got {text!r}") from None
    return text


def parse(text: str) -> ServingProperties:
    """Read a serving.properties text back into the typed model (ValueError when invalid)."""
    fields: dict[str, object] = {}
    extra: dict[str, str] = {}
    for key, value in parse_entries(text).items():
        check_key(key)
        field = FIELD_BY_KEY.get(key)
        if field is None:
            extra[key] = value
        else:
            fields[field] = typed_value(field, key, value)
    try:
        return ServingProperties(**fields, extra=extra)
    except ValidationError as exc:
        raise ValueError(one_line_error(exc)) from None


def one_line_error(exc: ValidationError) -> str:
    """The first error, prefixed with its serving.properties key (messages about `extra`
    entries and the whole model already name theirs)."""
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    key = dict(_KEYS).get(field)
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{key}: {msg}" if key else msg


_ENV_MODEL_KEYS = {"option.model_id": "HF_MODEL_ID", "option.revision": "HF_REVISION"}


def to_env(props: ServingProperties) -> dict[str, str]:
    """The same options as container environment (env-only packaging, no serving.properties).

    option.model_id -> HF_MODEL_ID and option.revision -> HF_REVISION: the variables DJL
    Serving reads to create the model it serves (serving/.../util/ModelStore.java); OPTION_*
    variables only configure a model that exists. option.x -> OPTION_X; server key x -> SERVING_X;
    engine=MPI -> OPTION_MPI_MODE=true; engine=Python needs no variable (LMI's default).
    """
    env: dict[str, str] = {}
    for key, value in props.entries().items():
        if key == "engine":
            if value == "MPI":
                env["OPTION_MPI_MODE"] = "true"
            continue
        if key in _ENV_MODEL_KEYS:
            env[_ENV_MODEL_KEYS[key]] = value
            continue
        if key.startswith("option."):
            name = "OPTION_" + key.removeprefix("option.")
        else:
            name = "SERVING_" + key
        env[name.upper().replace(".", "_").replace("-", "_")] = value
    return env
