"""Typed serving.properties: round trip, the plan -> file mapping, env form, injection."""

from __future__ import annotations

import warnings

import pytest

from lmiflow.serving.properties import (
    ServingProperties,
    TrustRemoteCodeWarning,
    parse,
    properties_for,
    render,
    to_env,
)


def _worked_example(**kw):
    """Llama-2-13B fp16, 4 concurrent requests of 3072 in + 1024 out, tp 2 on ml.g5.12xlarge."""
    args = dict(
        model_id="meta-llama/Llama-2-13b-hf", revision=None, trust_remote_code=False,
        tensor_parallel_degree=2, max_batch=4, max_model_len=3072 + 1024, dtype="fp16",
        gpu_memory_utilization=0.9, backend="vllm", quantize=None, extra={},
    )
    return properties_for(**(args | kw))


def test_worked_example_file():
    text = render(_worked_example())
    assert text == (
        "engine=Python\n"
        "option.model_id=meta-llama/Llama-2-13b-hf\n"
        "option.trust_remote_code=false\n"
        "option.entryPoint=djl_python.lmi_vllm.vllm_async_service\n"
        "option.async_mode=true\n"
        "option.rolling_batch=disable\n"
        "option.tensor_parallel_degree=2\n"
        "option.max_rolling_batch_size=4\n"
        "option.max_model_len=4096\n"
        "option.dtype=fp16\n"
        "option.gpu_memory_utilization=0.9\n"
    )


@pytest.mark.parametrize(
    "props",
    [
        ServingProperties(),
        _worked_example(extra={"option.enable_prefix_caching": True, "job_queue_size": 100}),
        _worked_example(backend="trtllm", dtype="bf16", revision="a1b2c3d"),
        ServingProperties(tensor_parallel_degree="max", pipeline_parallel_degree=2,
                          max_rolling_batch_prefill_tokens=8192, model_loading_timeout=3600,
                          quantize="bitsandbytes", model_id="/opt/ml/model/weights",
                          gpu_memory_utilization=0.875, rolling_batch="auto"),
    ],
)
def test_round_trip_is_exact(props):
    text = render(props)
    back = parse(text)
    assert back == props
    assert render(back) == text


def test_parse_reads_comments_and_any_case_booleans():
    p = parse("# hand written\nengine=MPI\noption.rolling_batch=trtllm\n\n"
              "option.async_mode=False\noption.max_num_tokens=16384\n")
    assert p.engine == "MPI" and p.async_mode is False
    assert p.extra == {"option.max_num_tokens": "16384"}


@pytest.mark.parametrize(
    ("dtype", "backend", "quantize", "want_dtype", "want_quantize"),
    [
        ("fp16", "vllm", None, "fp16", None),
        ("bf16", "vllm", None, "bf16", None),
        ("fp32", "trtllm", None, "fp32", None),
        ("auto", "vllm", None, "auto", None),
        ("auto", "trtllm", None, None, None),  # TensorRT-LLM has no dtype auto
        ("fp8", "vllm", None, "auto", "fp8"),  # runtime FP8 quantization
        ("fp8", "trtllm", None, None, "fp8"),
        ("int4", "vllm", None, "auto", None),  # pre-quantized: vLLM reads quantization_config
        ("int8", "vllm", None, "auto", None),
        ("int8", "vllm", "bitsandbytes", "auto", "bitsandbytes"),  # explicit quantize wins
    ],
)
def test_dtype_mapping(dtype, backend, quantize, want_dtype, want_quantize):
    p = _worked_example(dtype=dtype, backend=backend, quantize=quantize)
    assert (p.dtype, p.quantize) == (want_dtype, want_quantize)


def test_backends():
    v = _worked_example()
    assert (v.engine, v.rolling_batch, v.async_mode) == ("Python", "disable", True)
    old = _worked_example(async_mode=False)
    assert (old.rolling_batch, old.async_mode, old.entry_point) == ("vllm", None, None)
    t = _worked_example(backend="trtllm")
    assert (t.engine, t.rolling_batch, t.entry_point) == ("MPI", "trtllm", None)
    with pytest.raises(ValueError, match="backend"):
        _worked_example(backend="lmi-dist")


@pytest.mark.parametrize("gone", ["lmi-dist", "scheduler"])
def test_removed_rolling_batch_backends_are_rejected(gone):
    with pytest.raises(ValueError, match="LMI v15"):
        ServingProperties(rolling_batch=gone)
    with pytest.raises(ValueError, match=r"option\.rolling_batch.*LMI v15"):
        parse(f"engine=MPI\noption.rolling_batch={gone}\n")


def test_trust_remote_code_off_by_default_and_warns_when_on(caplog):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _worked_example().trust_remote_code is False
    with pytest.warns(TrustRemoteCodeWarning):
        p = _worked_example(trust_remote_code=True)
    assert "option.trust_remote_code=true" in render(p)
    assert "trust_remote_code" in caplog.text


def test_user_options_validated_and_may_only_raise_plan_values():
    p = _worked_example(extra={"option.max_rolling_batch_size": 16,
                               "option.max_model_len": 8192,
                               "option.enforce_eager": False,
                               "option.max_rolling_batch_prefill_tokens": 2048})
    assert p.max_rolling_batch_size == 16 and p.max_model_len == 8192
    assert p.max_rolling_batch_prefill_tokens == 2048
    assert p.extra == {"option.enforce_eager": "false"}
    with pytest.raises(ValueError, match="below the planned batch 4"):
        _worked_example(extra={"option.max_rolling_batch_size": 2})
    with pytest.raises(ValueError, match="below input"):
        _worked_example(extra={"option.max_model_len": 1024})
    with pytest.raises(ValueError, match=r"instance\.tensor_parallel_degree"):
        _worked_example(extra={"option.tensor_parallel_degree": 8})
    with pytest.raises(ValueError, match=r"model\.dtype"):
        _worked_example(extra={"option.dtype": "fp32"})
    with pytest.raises(ValueError, match=r"must start with 'option\.'"):
        _worked_example(extra={"max_model_len": 4096})
    with pytest.raises(ValueError, match="whole number"):
        _worked_example(extra={"option.max_model_len": "lots"})


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"model_id": "org/model\noption.trust_remote_code=true"}, "option.model_id"),
        ({"model_id": "org/model\r"}, "option.model_id"),
        ({"model_id": "org/model\\"}, "option.model_id"),  # would join the next line in Java
        ({"model_id": " org/model"}, "option.model_id"),
        ({"revision": "main\noption.x=1"}, "option.revision"),
        ({"extra": {"option.a=b": "1"}}, "option.a=b"),
        ({"extra": {"option.a b": "1"}}, "option.a b"),
        ({"extra": {"option.a\nengine": "1"}}, "option.a"),
        ({"extra": {"option.tokenizer": "x\x00y"}}, "option.tokenizer"),
        ({"extra": {"option.tokenizer": "x\ny=1"}}, "option.tokenizer"),
        ({"extra": {"option.": "1"}}, "option."),
    ],
)
def test_injection_rejected_naming_the_key(kw, key):
    with pytest.raises(ValueError) as err:
        _worked_example(**kw)
    assert key.split("\n")[0] in str(err.value)


def test_model_rejects_injection_and_duplicate_keys_directly():
    with pytest.raises(ValueError, match=r"option\.model_id"):
        ServingProperties(model_id="a\nb")
    with pytest.raises(ValueError, match="typed field 'max_model_len'"):
        ServingProperties(extra={"option.max_model_len": "1"})
    with pytest.raises(ValueError, match="engine=MPI"):
        ServingProperties(rolling_batch="trtllm")
    with pytest.raises(ValueError):
        ServingProperties(tensor_parallel_degree=0)
    with pytest.raises(ValueError):
        ServingProperties(gpu_memory_utilization=1.5)
    with pytest.raises(ValueError):
        ServingProperties(unknown_option=1)  # extra="forbid"


def test_parse_rejects_bad_files_naming_the_key():
    with pytest.raises(ValueError, match=r"option\.max_model_len"):
        parse("option.max_model_len=4k\n")
    with pytest.raises(ValueError, match=r"option\.async_mode"):
        parse("option.async_mode=yes\n")
    with pytest.raises(ValueError, match="tensor_parallel_degree"):
        parse("option.tensor_parallel_degree=all\n")
    with pytest.raises(ValueError, match="line 1"):
        parse("no separator here\n")
    with pytest.raises(ValueError, match="'batchsize'"):
        parse("batchsize=4\n")


def test_to_env_pins_the_revision_with_hf_revision():
    env = to_env(_worked_example(revision="0123abcd"))
    assert env["HF_REVISION"] == "0123abcd" and "OPTION_REVISION" not in env


def test_local_path_model_id_allowed():
    p = _worked_example(model_id="/home/me/models/tiny-llama")
    assert parse(render(p)).model_id == "/home/me/models/tiny-llama"


def test_to_env_follows_lmi_translation():
    env = to_env(_worked_example(extra={"job_queue_size": 64, "option.enable_lora": True}))
    # DJL's ModelStore creates the served model from HF_MODEL_ID, not OPTION_MODEL_ID
    assert env["HF_MODEL_ID"] == "meta-llama/Llama-2-13b-hf" and "OPTION_MODEL_ID" not in env
    assert env["OPTION_TENSOR_PARALLEL_DEGREE"] == "2"
    assert env["OPTION_ENTRYPOINT"] == "djl_python.lmi_vllm.vllm_async_service"
    assert env["OPTION_ASYNC_MODE"] == "true"
    assert env["OPTION_MAX_ROLLING_BATCH_SIZE"] == "4"
    assert env["SERVING_JOB_QUEUE_SIZE"] == "64"
    assert env["OPTION_ENABLE_LORA"] == "true"
    assert "OPTION_MPI_MODE" not in env and not any("ENGINE" in k for k in env)
    mpi = to_env(_worked_example(backend="trtllm"))
    assert mpi["OPTION_MPI_MODE"] == "true" and mpi["OPTION_ROLLING_BATCH"] == "trtllm"
    # one variable per entry (engine=Python needs none)
    assert len(env) == len(_worked_example(
        extra={"job_queue_size": 64, "option.enable_lora": True}).entries()) - 1
