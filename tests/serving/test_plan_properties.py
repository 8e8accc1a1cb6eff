"""serving.properties per engine and image: every key the plan depends on, in the words the
chosen LMI release understands (expected files written out by hand from the LMI docs)."""

from __future__ import annotations

import pytest

from lmiflow.serving.images import image_from_tag
from lmiflow.serving.plan_properties import PlanError, ServingPlan, kv_free_fraction, render_plan
from lmiflow.serving.properties import parse, render, to_env

GB = 10**9
VLLM_NEW = image_from_tag("0.38.0-lmi29.0.0-cu130", "test")
VLLM_33 = image_from_tag("0.33.0-lmi15.0.0-cu128", "test")
VLLM_32 = image_from_tag("0.32.0-lmi14.0.0-cu126", "test")
VLLM_31 = image_from_tag("0.31.0-lmi13.0.0-cu124", "test")
VLLM_28 = image_from_tag("0.28.0-lmi10.0.0-cu124", "test")
TRT_26 = image_from_tag("0.26.0-tensorrtllm0.7.1-cu122", "test")
TRT_29 = image_from_tag("0.29.0-tensorrtllm0.11.0-cu124", "test")
TRT_30 = image_from_tag("0.30.0-tensorrtllm0.12.0-cu125", "test")
TRT_32 = image_from_tag("0.32.0-tensorrtllm0.12.0-cu125", "test")
TRT_33 = image_from_tag("0.33.0-tensorrtllm0.21.0-cu128", "test")


def _plan(**kw) -> ServingPlan:
    """Llama-2-13B fp16 (the worked example) at tp 2: 2 sequences per model copy of 3,072 in +
    1,024 out on 24 GB GPUs, 15 GB of weights + overhead per GPU, 90 % usable."""
    args = dict(model_id="meta-llama/Llama-2-13b-hf", tensor_parallel_degree=2, max_batch=2,
                max_input_tokens=3072, max_output_tokens=1024, dtype="fp16",
                activation_dtype="fp16", kv_cache_dtype="fp16", gpu_memory_utilization=0.9,
                gpu_memory_bytes=24 * GB, fixed_bytes_per_gpu=15 * GB)
    return ServingPlan(**(args | kw))


def _text(plan: ServingPlan, image, **kw) -> str:
    props = render_plan(plan, image, **kw)
    text = render(props)
    assert parse(text) == props  # every rendered file reads back as itself
    return text


COMMON = ("option.model_id=meta-llama/Llama-2-13b-hf\n"
          "option.trust_remote_code=false\n")


def test_vllm_async_image():
    assert _text(_plan(), VLLM_NEW) == (
        "engine=Python\n" + COMMON +
        "option.entryPoint=djl_python.lmi_vllm.vllm_async_service\n"
        "option.async_mode=true\n"
        "option.rolling_batch=disable\n"
        "option.tensor_parallel_degree=2\n"
        "option.max_rolling_batch_size=2\n"
        "option.max_model_len=4096\n"
        "option.max_rolling_batch_prefill_tokens=8192\n"
        "option.dtype=fp16\n"
        "option.gpu_memory_utilization=0.9\n"
    )


def test_vllm_before_the_async_service_uses_rolling_batch():
    text = _text(_plan(), VLLM_31)
    assert "option.rolling_batch=vllm\n" in text
    assert "entryPoint" not in text and "async_mode" not in text
    assert "option.enable_chunked_prefill" not in text  # 4,096 <= 8,192: no chunking needed


def test_vllm_v0_long_context_chunks_prefill_to_keep_the_planned_bound():
    long = _plan(max_input_tokens=30000, max_output_tokens=2000)
    assert "option.enable_chunked_prefill=true\n" in _text(long, VLLM_31)
    assert "enable_chunked_prefill" not in _text(long, VLLM_33)  # V1 always chunks
    with pytest.raises(PlanError) as err:
        render_plan(long, VLLM_28)
    assert err.value.field == "serving.image_version" and "0.29.0" in err.value.reason


def test_batch_is_per_model_copy_and_prefill_covers_it():
    text = _text(_plan(max_batch=9000), VLLM_NEW)
    assert "option.max_rolling_batch_size=9000\n" in text
    assert "option.max_rolling_batch_prefill_tokens=9000\n" in text  # >= max_num_seqs


def test_fp8_kv_cache_rendered_where_the_image_passes_it_to_vllm():
    fp8 = _plan(kv_cache_dtype="fp8")
    assert "option.kv_cache_dtype=fp8\n" in _text(fp8, VLLM_32)
    with pytest.raises(PlanError) as err:
        render_plan(fp8, VLLM_31)
    assert err.value.field == "model.kv_cache_dtype" and "0.32.0" in err.value.reason
    # same-size KV (bf16 planned, fp16 compute on a GPU without bf16) is just the default
    assert "kv_cache_dtype" not in _text(_plan(kv_cache_dtype="bf16"), VLLM_NEW)
    with pytest.raises(PlanError, match="model's dtype or in fp8"):
        render_plan(_plan(kv_cache_dtype="fp32"), VLLM_NEW)


@pytest.mark.parametrize(
    ("dtype", "image", "want"),
    [
        ("bf16", VLLM_NEW, {"option.dtype": "bf16"}),
        ("auto", VLLM_NEW, {"option.dtype": "auto"}),
        ("fp8", VLLM_NEW, {"option.dtype": "auto", "option.quantize": "fp8"}),
        ("auto", TRT_30, {}),  # the toolkit has no dtype auto: LMI's default
        ("fp8", TRT_30, {"option.quantize": "fp8"}),
        ("auto", TRT_33, {"option.dtype": "auto"}),
        ("fp8", TRT_33, {"option.dtype": "auto", "option.quant_algo": "FP8"}),
        # TensorRT-LLM's LLM API takes torch's names (no bf16/fp16 mapper on this path)
        ("bf16", TRT_33, {"option.dtype": "bfloat16"}),
        ("fp16", TRT_33, {"option.dtype": "float16"}),
        ("fp32", TRT_33, {"option.dtype": "float32"}),
        ("bf16", TRT_32, {"option.dtype": "bf16"}),  # the toolkit images keep LMI's words
    ],
)
def test_weights_dtype(dtype, image, want):
    entries = render_plan(_plan(dtype=dtype), image).entries()
    got = {k: v for k, v in entries.items()
           if k in ("option.dtype", "option.quantize", "option.quant_algo")}
    assert got == want


def test_fp8_weights_need_a_trtllm_image_that_quantizes():
    with pytest.raises(PlanError) as err:
        render_plan(_plan(dtype="fp8"), image_from_tag("0.25.0-tensorrtllm0.5.0-cu122", "t"))
    assert err.value.field == "model.dtype"


def test_trtllm_kv_fraction_gives_the_planned_kv_budget():
    # usable 0.9 x 24 = 21.6 GB; 15 GB fixed -> 6.6 GB of KV out of 9 GB free = 0.733 -> 0.73
    assert kv_free_fraction(_plan()) == 0.73
    with pytest.raises(PlanError, match="no memory for the KV cache"):
        kv_free_fraction(_plan(fixed_bytes_per_gpu=22 * GB))


def test_trtllm_toolkit_mpi_engine():
    assert _text(_plan(), TRT_30) == (
        "engine=MPI\n" + COMMON +
        "option.rolling_batch=trtllm\n"
        "option.tensor_parallel_degree=2\n"
        "option.max_rolling_batch_size=2\n"
        "option.dtype=fp16\n"
        "option.max_input_len=3072\n"
        "option.max_output_len=4096\n"  # from 0.30.0 it means max_seq_len
        "option.max_num_tokens=8192\n"
        "option.kv_cache_free_gpu_mem_fraction=0.73\n"
        "option.enable_kv_cache_reuse=false\n"
    )


def test_trtllm_release_differences():
    assert "option.max_output_len=1024\n" in _text(_plan(), TRT_29)  # output only before 0.30
    t32 = _text(_plan(), TRT_32)
    assert t32.startswith("engine=Python\noption.mpi_mode=true\n")
    assert "option.rolling_batch=trtllm\n" in t32
    t26 = _text(_plan(), TRT_26)
    assert "max_num_tokens" not in t26  # from 0.27.0
    # a prompt longer than the prefill budget still fits one step
    assert "option.max_num_tokens=12000\n" in _text(_plan(max_input_tokens=12000), TRT_30)


def test_trtllm_llm_api_image():
    assert _text(_plan(kv_cache_dtype="fp8"), TRT_33) == (
        "engine=Python\n" + COMMON +
        "option.entryPoint=djl_python.lmi_trtllm.trtllm_async_service\n"
        "option.async_mode=true\n"
        "option.rolling_batch=disable\n"
        "option.tensor_parallel_degree=2\n"
        "option.max_rolling_batch_size=2\n"
        "option.dtype=float16\n"
        "option.max_input_len=3072\n"
        "option.max_seq_len=4096\n"
        "option.max_num_tokens=8192\n"
        "option.free_gpu_memory_fraction=0.73\n"
        "option.enable_block_reuse=true\n"
        "option.kv_cache_quant_algo=FP8\n"
    )


def test_fp8_kv_with_the_trtllm_toolkit_is_refused():
    with pytest.raises(PlanError) as err:
        render_plan(_plan(kv_cache_dtype="fp8"), TRT_32)
    assert err.value.field == "model.kv_cache_dtype" and "0.33.0" in err.value.reason


def test_user_options():
    p = render_plan(_plan(), VLLM_NEW, extra={"option.enable_prefix_caching": True,
                                              "option.max_rolling_batch_size": 8})
    assert p.max_rolling_batch_size == 8
    assert p.extra == {"option.enable_prefix_caching": "true"}
    with pytest.raises(PlanError, match="below the planned 2"):
        render_plan(_plan(), VLLM_NEW, extra={"option.max_rolling_batch_size": 1})
    with pytest.raises(PlanError, match="below the planned 3072"):
        render_plan(_plan(), TRT_33, extra={"option.max_input_len": 1024})
    for key, field in (("option.kv_cache_dtype", "model.kv_cache_dtype"),
                       ("option.free_gpu_memory_fraction", "instance.gpu_memory_utilization"),
                       ("option.entryPoint", "serving.image_version"),
                       ("option.mpi_mode", "serving.backend")):
        with pytest.raises(PlanError, match=field.replace(".", r"\.")) as err:
            render_plan(_plan(), VLLM_NEW, extra={key: "x"})
        assert err.value.field == "serving.options"
    # a user may raise the prefill budget (more activation memory is their call)
    p = render_plan(_plan(), VLLM_NEW, extra={"option.max_rolling_batch_prefill_tokens": 16384})
    assert p.max_rolling_batch_prefill_tokens == 16384


def test_model_loading_timeout_follows_the_plan():
    assert "option.model_loading_timeout=2400\n" in _text(_plan(model_loading_timeout_s=2400),
                                                          TRT_33)


def test_env_form_of_the_trtllm_engines():
    env = to_env(render_plan(_plan(), TRT_32))
    assert env["OPTION_MPI_MODE"] == "true" and env["OPTION_MAX_INPUT_LEN"] == "3072"
    assert to_env(render_plan(_plan(), TRT_30))["OPTION_MPI_MODE"] == "true"  # engine=MPI
    assert "OPTION_MPI_MODE" not in to_env(render_plan(_plan(), TRT_33))


def test_trtllm_llm_api_dtype_is_one_tensorrt_llm_knows():
    """LMI 0.33.0 hands option.dtype to TensorRT-LLM's LLM(dtype=...) unchanged
    (djl_python/properties_manager/trt_properties.py line 134); TensorRT-LLM's dtype table
    (tensorrt_llm/_utils.py _str_to_torch_dtype_dict) has bfloat16/float16/float32 and the
    LLM API also takes auto: `bf16` would fail the engine build at start-up."""
    known = {"bfloat16", "float16", "float32", "auto"}
    for dtype in ("bf16", "fp16", "fp32", "auto", "fp8"):
        rendered = render_plan(_plan(dtype=dtype), TRT_33).entries()["option.dtype"]
        assert rendered in known, (dtype, rendered)
    assert TRT_33.has("trtllm_dtype_words") and not TRT_32.has("trtllm_dtype_words")
