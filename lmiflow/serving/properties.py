"""The typed LMI `serving.properties`: one model, rendered to the file DJL Serving reads and parsed
back, plus the `OPTION_*` environment form for env-only packaging.

Why typed: the file is where a plan (shards, batch, context, dtype) becomes the container's
behaviour; a misspelt key or a value LMI v15 dropped (`lmi-dist`) would only show up as a failed
endpoint twenty minutes later. Facts used here (LMI docs, deepjavalibrary/djl-serving):

- `engine=Python` for vLLM (and HF accelerate), `engine=MPI` for TensorRT-LLM.
- vLLM from LMI v15 (djl 0.33): `option.async_mode=true`,
  `option.entryPoint=djl_python.lmi_vllm.vllm_async_service`, `option.rolling_batch=disable`.
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

VLLM_ASYNC_ENTRYPOINT = "djl_python.lmi_vllm.vllm_async_service"
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


def _fmt(value: object) -> str:
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
    dtype: Literal["fp16", "bf16", "fp32", "auto"] | None = None
    quantize: str | None = None
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
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
            if key in _FIELD_BY_KEY:
                raise ValueError(f"key {key!r}: set the typed field {_FIELD_BY_KEY[key]!r}")
            if not value:
                raise ValueError(f"value of {key}: empty")
            check_value(key, value)
        return v

    @model_validator(mode="after")
    def _consistency(self) -> ServingProperties:
        if self.rolling_batch == "trtllm" and self.engine != "MPI":
            raise ValueError("option.rolling_batch=trtllm needs engine=MPI")
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
                out[key] = _fmt(value)
        out.update(self.extra)
        for key, value in out.items():
            check_value(key, value)
        return out


# Field -> key, in render order. trust_remote_code is always written: explicit "off".
_KEYS: tuple[tuple[str, str], ...] = (
    ("engine", "engine"),
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
    ("dtype", "option.dtype"),
    ("quantize", "option.quantize"),
    ("gpu_memory_utilization", "option.gpu_memory_utilization"),
    ("model_loading_timeout", "option.model_loading_timeout"),
)
_FIELD_BY_KEY = {key: field for field, key in _KEYS}
_BOOL_FIELDS = {"trust_remote_code", "async_mode"}
_INT_FIELDS = {
    "pipeline_parallel_degree",
    "max_rolling_batch_size",
    "max_model_len",
    "max_rolling_batch_prefill_tokens",
    "model_loading_timeout",
}


def render(props: ServingProperties) -> str:
    """The serving.properties text; parse(render(p)) == p."""
    return render_entries(props.entries())


def _typed(field: str, key: str, text: str) -> object:
    if field in _BOOL_FIELDS:
        low = text.lower()
        if low not in ("true", "false"):
            raise ValueError(f"value of {key}: true or false, got {text!r}")
        return low == "true"
    if field in _INT_FIELDS:
        if not text.isdigit():
            raise ValueError(f"value of {key}: a whole number, got {text!r}")
        return int(text)
    if field == "tensor_parallel_degree":
        return text if text == "max" else _typed("max_model_len", key, text)
    if field == "gpu_memory_utilization":
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
        field = _FIELD_BY_KEY.get(key)
        if field is None:
            extra[key] = value
        else:
            fields[field] = _typed(field, key, value)
    try:
        return ServingProperties(**fields, extra=extra)
    except ValidationError as exc:
        raise ValueError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = err.get("loc", ())
    field = str(loc[0]) if loc else ""
    key = dict(_KEYS).get(field, field)
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
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


# ---- builder ------------------------------------------------------------------------------

# Keys whose value must agree with the plan: the user sets them through the config's own field.
_PLAN_KEYS = {
    "engine": "serving.backend",
    "option.model_id": "model.id",
    "option.revision": "model.revision",
    "option.trust_remote_code": "model.trust_remote_code",
    "option.tensor_parallel_degree": "instance.tensor_parallel_degree",
    "option.dtype": "model.dtype",
    "option.quantize": "model.dtype",
    "option.rolling_batch": "serving.backend",
    "option.gpu_memory_utilization": "instance.gpu_memory_utilization",
}


def _extra_text(key: str, value: str | int | float | bool) -> str:
    if isinstance(value, bool | int | float):
        return _fmt(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"value of {key}: a string, number or boolean")


def properties_for(
    model_id: str,
    revision: str | None,
    trust_remote_code: bool,
    tensor_parallel_degree: int,
    max_batch: int,
    max_model_len: int,
    dtype: str,
    gpu_memory_utilization: float,
    backend: Literal["vllm", "trtllm"],
    quantize: str | None,
    extra: dict[str, str | int | float | bool],
    *,
    async_mode: bool = True,
    model_loading_timeout: int | None = None,
    model_max_len: int | None = None,
) -> ServingProperties:
    """serving.properties for a plan. The caller passes max_model_len >= input + output and
    max_batch >= concurrency; both are written as given (user options may only raise them).

    dtype mapping (lmiflow names -> LMI):
    - fp32/fp16/bf16: option.dtype as is.
    - auto: vLLM `auto` (reads torch_dtype / quantization_config); TensorRT-LLM has no auto,
      so option.dtype is left out (LMI's default).
    - fp8: runtime FP8 quantization: option.quantize=fp8 with dtype auto (vLLM loads the bf16/fp16
      checkpoint and quantizes). A checkpoint that is already FP8 should be planned as `auto`:
      the LMI vLLM guide says setting quantize on a pre-quantized model limits optimisations.
    - int8/int4: pre-quantized checkpoints (GPTQ/AWQ...): dtype auto, no runtime quantize;
      vLLM reads quantization_config. Runtime bitsandbytes only when quantize says so.
    An explicit `quantize` always wins. `async_mode=False` writes the pre-v15 vLLM form
    (rolling_batch=vllm) for older LMI images. `model_max_len` (the model's
    max_position_embeddings) caps a user's option.max_model_len: vLLM refuses a longer one.
    """
    if backend not in ("vllm", "trtllm"):
        raise ValueError(f"backend: vllm or trtllm, got {backend!r}")
    if max_batch < 1 or max_model_len < 1:
        raise ValueError("max_batch and max_model_len must be >= 1")
    lmi_dtype: str | None
    runtime_quantize = quantize
    if dtype in ("fp32", "fp16", "bf16"):
        lmi_dtype = dtype
    elif dtype in ("auto", "int8", "int4"):
        lmi_dtype = "auto"
    elif dtype == "fp8":
        lmi_dtype = "auto"
        runtime_quantize = quantize or "fp8"
    else:
        raise ValueError(f"dtype: one of fp32, fp16, bf16, fp8, int8, int4, auto; got {dtype!r}")
    if backend == "trtllm" and lmi_dtype == "auto":
        lmi_dtype = None

    fields: dict[str, object] = {
        "model_id": model_id,
        "revision": revision,
        "trust_remote_code": trust_remote_code,
        "tensor_parallel_degree": tensor_parallel_degree,
        "max_rolling_batch_size": max_batch,
        "max_model_len": max_model_len,
        "dtype": lmi_dtype,
        "quantize": runtime_quantize,
        "gpu_memory_utilization": gpu_memory_utilization,
        "model_loading_timeout": model_loading_timeout,
    }
    if backend == "vllm":
        fields["engine"] = "Python"
        if async_mode:
            fields |= {
                "async_mode": True,
                "entry_point": VLLM_ASYNC_ENTRYPOINT,
                "rolling_batch": "disable",
            }
        else:
            fields["rolling_batch"] = "vllm"
    else:
        fields |= {"engine": "MPI", "rolling_batch": "trtllm"}

    other: dict[str, str] = {}
    for key, value in extra.items():
        check_key(key)
        text = _extra_text(key, value)
        check_value(key, text)
        if key in _PLAN_KEYS:
            raise ValueError(f"key {key!r}: set {_PLAN_KEYS[key]} in the config instead")
        field = _FIELD_BY_KEY.get(key)
        if field is None:
            other[key] = text
            continue
        typed = _typed(field, key, text)
        if field == "max_rolling_batch_size" and int(typed) < max_batch:  # type: ignore[call-overload]
            raise ValueError(f"key {key!r}: {typed} is below the planned batch {max_batch}")
        if field == "max_model_len" and int(typed) < max_model_len:  # type: ignore[call-overload]
            raise ValueError(f"key {key!r}: {typed} is below input + output = {max_model_len}")
        if field == "max_model_len" and model_max_len and int(typed) > model_max_len:  # type: ignore[call-overload]
            raise ValueError(f"key {key!r}: {typed} exceeds the model's "
                             f"max_position_embeddings {model_max_len}")
        fields[field] = typed  # explicit user option beats the derived value
    try:
        return ServingProperties(**fields, extra=other)
    except ValidationError as exc:
        raise ValueError(_one_line(exc)) from None
