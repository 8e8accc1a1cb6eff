"""What a plan and an LMI image make of `serving.properties`, engine by engine.

The plan sized one model copy (one DJL worker) for `max_batch` sequences of `max_input_tokens +
max_output_tokens` in a memory budget; every key below carries one of those decisions into
the container, in the words the chosen image understands (lmiflow.serving.images holds which
image accepts what, with the djl-serving file each fact comes from):

- batch: `option.max_rolling_batch_size` is per worker (DJL starts GPUs / tp workers per
  instance, each with its own engine: vLLM's max_num_seqs, TensorRT-LLM's max_batch_size), so it
  is the plan's sequences per model copy, not the endpoint's concurrency: a larger value lets
  the engine admit more sequences than the KV cache was sized for.
- context: vLLM `option.max_model_len`; TensorRT-LLM `option.max_input_len` (default 1024, so
  longer prompts are rejected) and `option.max_output_len` / `option.max_seq_len`.
- prefill: the plan's activation term assumes at most MAX_BATCHED_TOKENS per scheduler step:
  vLLM `option.max_rolling_batch_prefill_tokens`, TensorRT-LLM `option.max_num_tokens`.
- memory: vLLM's `option.gpu_memory_utilization` is a share of the whole GPU; TensorRT-LLM's
  KV fraction is a share of what is free once weights and runtime buffers are loaded, so it is
  derived from the plan's per-GPU figures to give the same KV budget.
- dtypes: weights as before (runtime fp8 is `option.quantize=fp8` / `option.quant_algo=FP8`);
  an fp8 KV cache is `option.kv_cache_dtype=fp8` (vLLM) or `option.kv_cache_quant_algo=FP8`
  (TensorRT-LLM's LLM API) and is refused on images that would silently keep 16-bit KV.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field, ValidationError

from lmiflow.serving.images import LmiImage
from lmiflow.serving.properties import (
    FIELD_BY_KEY,
    ServingProperties,
    check_key,
    check_value,
    fmt,
    one_line_error,
    typed_value,
)
from lmiflow.sizing.memory import DTYPE_BYTES, MAX_BATCHED_TOKENS

VLLM_ASYNC_ENTRYPOINT = "djl_python.lmi_vllm.vllm_async_service"
TRTLLM_ASYNC_ENTRYPOINT = "djl_python.lmi_trtllm.trtllm_async_service"


class PlanError(ValueError):
    """The plan asks for something the chosen image cannot do; `field` is the config field."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class ServingPlan(BaseModel):
    """The plan's decisions for one model copy, in lmiflow's own terms."""

    model_id: str | None = Field(description="None: the weights are in the model directory "
                                             "(/opt/ml/model), staged or an s3:// model.")
    revision: str | None = None
    trust_remote_code: bool = False
    tensor_parallel_degree: int = Field(ge=1)
    max_batch: int = Field(ge=1, description="Sequences per model copy the KV cache holds.")
    max_input_tokens: int = Field(ge=1)
    max_output_tokens: int = Field(ge=1)
    dtype: str = Field(description="fp32, fp16, bf16, fp8 (runtime), or auto (as the "
                                   "checkpoint says, pre-quantized ones included).")
    activation_dtype: str = Field(description="The 16/32-bit dtype the engine computes in.")
    kv_cache_dtype: str = Field(description="Planned KV dtype: fp32, fp16, bf16 or fp8.")
    gpu_memory_utilization: float = Field(gt=0, le=1)
    gpu_memory_bytes: int | None = Field(default=None, description="One GPU's memory.")
    fixed_bytes_per_gpu: int | None = Field(
        default=None, description="Weights + runtime overhead on one GPU (the plan's).")
    prefill_tokens: int = Field(default=MAX_BATCHED_TOKENS, ge=1)
    model_loading_timeout_s: int | None = Field(default=None, ge=1)
    model_max_len: int | None = Field(
        default=None, ge=1, description="The model's max_position_embeddings: vLLM refuses a "
        "longer option.max_model_len.")

    @property
    def max_model_len(self) -> int:
        return self.max_input_tokens + self.max_output_tokens


# Keys whose value the plan decides: the user changes them through the config's own field.
PLAN_KEYS = {
    "engine": "serving.backend",
    "option.model_id": "model.id",
    "option.revision": "model.revision",
    "option.trust_remote_code": "model.trust_remote_code",
    "option.tensor_parallel_degree": "instance.tensor_parallel_degree",
    "option.dtype": "model.dtype",
    "option.quantize": "model.dtype",
    "option.quant_algo": "model.dtype",
    "option.kv_cache_dtype": "model.kv_cache_dtype",
    "option.kv_cache_quant_algo": "model.kv_cache_dtype",
    "option.rolling_batch": "serving.backend",
    "option.mpi_mode": "serving.backend",
    "option.async_mode": "serving.image_version",
    "option.entryPoint": "serving.image_version",
    "option.gpu_memory_utilization": "instance.gpu_memory_utilization",
    "option.kv_cache_free_gpu_mem_fraction": "instance.gpu_memory_utilization",
    "option.free_gpu_memory_fraction": "instance.gpu_memory_utilization",
}
# Keys a user option may only raise (never below what the plan needs).
_FLOOR_KEYS = ("max_rolling_batch_size", "max_model_len", "max_input_len", "max_output_len",
               "max_seq_len")


def kv_free_fraction(plan: ServingPlan) -> float:
    """TensorRT-LLM's KV share of free memory that gives the plan's KV budget: (usable - fixed)
    / (GPU - fixed), rounded down to 0.01 so the engine never takes more than planned."""
    if plan.gpu_memory_bytes is None or plan.fixed_bytes_per_gpu is None:
        raise ValueError("TensorRT-LLM needs the plan's per-GPU memory figures")
    usable = plan.gpu_memory_bytes * plan.gpu_memory_utilization
    free = plan.gpu_memory_bytes - plan.fixed_bytes_per_gpu
    if free <= 0 or usable <= plan.fixed_bytes_per_gpu:
        raise PlanError("instance.gpu_memory_utilization",
                        "weights and runtime overhead leave no memory for the KV cache")
    return math.floor((usable - plan.fixed_bytes_per_gpu) / free * 100) / 100


def _weights(plan: ServingPlan, image: LmiImage) -> tuple[str | None, dict[str, object]]:
    """(option.dtype, quantization fields) for the engine."""
    if plan.dtype in ("fp32", "fp16", "bf16"):
        dtype: str | None = plan.dtype
    elif plan.dtype in ("auto", "fp8"):
        dtype = "auto"
    else:
        raise PlanError("model.dtype", f"{plan.dtype!r}: one of fp32, fp16, bf16, fp8, auto "
                                       "(int8/int4 checkpoints are served as auto)")
    quant: dict[str, object] = {}
    if plan.dtype == "fp8":
        if image.backend == "vllm":
            quant["quantize"] = "fp8"
        elif image.has("trtllm_llm_api"):
            quant["quant_algo"] = "FP8"
        elif image.has("trtllm_quantize_fp8"):
            quant["quantize"] = "fp8"
        else:
            raise PlanError("model.dtype", f"fp8 with TensorRT-LLM needs image 0.26.0 or newer "
                                           f"(this is {image.djl_version})")
    if image.backend == "trtllm" and dtype == "auto" and not image.has("trtllm_llm_api"):
        dtype = None  # the toolkit images have no dtype auto: leave LMI's default
    return dtype, quant


def _kv_fp8(plan: ServingPlan) -> bool:
    """True for an fp8 KV cache; False when KV is in the compute dtype. Anything else cannot
    be rendered: LMI engines store KV in the model's dtype unless told fp8."""
    kv, act = plan.kv_cache_dtype, plan.activation_dtype
    if kv == "fp8":
        return True
    if DTYPE_BYTES.get(kv) == DTYPE_BYTES.get(act):
        return False
    raise PlanError("model.kv_cache_dtype", f"{kv} KV with {act} compute: LMI engines keep the "
                                            "KV cache in the model's dtype or in fp8")


def _vllm(plan: ServingPlan, image: LmiImage) -> dict[str, object]:
    dtype, quant = _weights(plan, image)
    f: dict[str, object] = {"engine": "Python", "dtype": dtype, **quant,
                            "gpu_memory_utilization": plan.gpu_memory_utilization}
    if image.has("vllm_async_service"):
        f |= {"entry_point": VLLM_ASYNC_ENTRYPOINT, "async_mode": True, "rolling_batch": "disable"}
    else:
        f["rolling_batch"] = "vllm"
    prefill = max(plan.prefill_tokens, plan.max_batch)
    f["max_rolling_batch_prefill_tokens"] = prefill
    if plan.max_model_len > prefill and not image.has("vllm_v1_engine"):
        # vLLM's V0 engine refuses max_num_batched_tokens < max_model_len unless prefills are
        # chunked; the V1 engine (LMI 0.33.0+) always chunks.
        if not image.has("vllm_chunked_prefill_option"):
            raise PlanError("serving.image_version",
                            f"{image.djl_version} cannot bound a prefill step to {prefill} "
                            f"tokens with max_model_len {plan.max_model_len} (no "
                            "option.enable_chunked_prefill before 0.29.0)")
        f["enable_chunked_prefill"] = True
    if _kv_fp8(plan):
        if not image.has("vllm_engine_args"):
            raise PlanError("model.kv_cache_dtype",
                            f"fp8 KV needs image 0.32.0 or newer: {image.djl_version} does not "
                            "pass option.kv_cache_dtype to vLLM (it would allocate 16-bit KV)")
        f["kv_cache_dtype"] = "fp8"
    f["max_model_len"] = plan.max_model_len
    return f


# TensorRT-LLM's LLM API names dtypes as torch does (images.FACTS "trtllm_dtype_words": LMI
# 0.33.0's trt_properties.py line 134 passes option.dtype to LLM(dtype=...) unchanged, and
# tensorrt_llm/_utils.py's _str_to_torch_dtype_dict knows bfloat16/float16/float32, not bf16).
TRTLLM_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "auto": "auto"}


def _trtllm(plan: ServingPlan, image: LmiImage) -> dict[str, object]:
    dtype, quant = _weights(plan, image)
    if dtype is not None and image.has("trtllm_dtype_words"):
        dtype = TRTLLM_DTYPE[dtype]
    fraction = kv_free_fraction(plan)
    f: dict[str, object] = {"dtype": dtype, **quant, "max_input_len": plan.max_input_tokens}
    if image.has("trtllm_max_num_tokens"):
        f["max_num_tokens"] = max(plan.prefill_tokens, plan.max_input_tokens)
    kv_fp8 = _kv_fp8(plan)
    if image.has("trtllm_llm_api"):
        f |= {"engine": "Python", "entry_point": TRTLLM_ASYNC_ENTRYPOINT, "async_mode": True,
              "rolling_batch": "disable", "max_seq_len": plan.max_model_len,
              "free_gpu_memory_fraction": fraction, "enable_block_reuse": True}
        if kv_fp8:
            f["kv_cache_quant_algo"] = "FP8"
        return f
    if kv_fp8:
        raise PlanError("model.kv_cache_dtype",
                        f"fp8 KV with TensorRT-LLM needs image 0.33.0 or newer (the LLM API's "
                        f"kv_cache_quant_algo); {image.djl_version} has no such option")
    if image.has("trtllm_engine_mpi"):
        f["engine"] = "MPI"
    else:
        f |= {"engine": "Python", "mpi_mode": True}
    f |= {"rolling_batch": "trtllm", "kv_cache_free_gpu_mem_fraction": fraction,
          "max_output_len": (plan.max_model_len if image.has("trtllm_output_len_is_seq_len")
                             else plan.max_output_tokens)}
    if image.has("trtllm_kv_cache_reuse"):
        f["enable_kv_cache_reuse"] = False  # the docs' default, written out
    return f


def _option_text(key: str, value: str | int | float | bool) -> str:
    if isinstance(value, bool | int | float):
        return fmt(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"value of {key}: a string, number or boolean")


def render_plan(plan: ServingPlan, image: LmiImage,
                extra: dict[str, str | int | float | bool] | None = None,
                quantize: str | None = None) -> ServingProperties:
    """serving.properties for a plan on an image. User options (`extra`) are checked: keys the
    plan decides must be set through the config's own field, and the context and batch keys may
    only be raised. An explicit `quantize` (e.g. bitsandbytes) replaces the derived one."""
    fields = _vllm(plan, image) if image.backend == "vllm" else _trtllm(plan, image)
    fields |= {
        "model_id": plan.model_id, "revision": plan.revision,
        "trust_remote_code": plan.trust_remote_code,
        "tensor_parallel_degree": plan.tensor_parallel_degree,
        "max_rolling_batch_size": plan.max_batch,
        "model_loading_timeout": plan.model_loading_timeout_s,
    }
    if quantize is not None:
        fields["quantize"] = quantize
    other: dict[str, str] = {}
    for key, value in (extra or {}).items():
        check_key(key)
        text = _option_text(key, value)
        check_value(key, text)
        if key in PLAN_KEYS:
            raise PlanError("serving.options", f"key {key!r}: set {PLAN_KEYS[key]} in the "
                                               "config instead")
        field = FIELD_BY_KEY.get(key)
        if field is None:
            other[key] = text
            continue
        typed = typed_value(field, key, text)
        planned = fields.get(field)
        if field in _FLOOR_KEYS and planned is not None and int(typed) < int(planned):  # type: ignore[call-overload]
            raise PlanError("serving.options", f"key {key!r}: {typed} is below the planned "
                                               f"{planned}")
        if field == "max_model_len" and plan.model_max_len and int(typed) > plan.model_max_len:  # type: ignore[call-overload]
            raise PlanError("serving.options", f"key {key!r}: {typed} exceeds the model's "
                                               f"max_position_embeddings {plan.model_max_len}")
        fields[field] = typed  # an explicit user option beats the derived value
    try:
        return ServingProperties(**fields, extra=other)
    except ValidationError as exc:
        raise PlanError("serving.options", one_line_error(exc)) from None

