"""Typed serving.properties: round trip, the file's grammar, env form, injection. (What a plan
renders per engine and image: test_plan_properties.py.)"""

from __future__ import annotations

import warnings

import pytest

from lmiflow.serving.images import image_from_tag
from lmiflow.serving.plan_properties import ServingPlan, render_plan
from lmiflow.serving.properties import (
    ServingProperties,
    TrustRemoteCodeWarning,
    parse,
    render,
    to_env,
)

VLLM = image_from_tag("0.38.0-lmi29.0.0-cu130", "test")
TRT = image_from_tag("0.30.0-tensorrtllm0.12.0-cu125", "test")


def _worked_example(extra=None, image=VLLM, **kw):
    """Llama-2-13B fp16, 4 sequences per copy of 3072 in + 1024 out, tp 2 on ml.g5.12xlarge."""
    args = dict(
        model_id="meta-llama/Llama-2-13b-hf", tensor_parallel_degree=2, max_batch=4,
        max_input_tokens=3072, max_output_tokens=1024, dtype="fp16", activation_dtype="fp16",
        kv_cache_dtype="fp16", gpu_memory_utilization=0.9, gpu_memory_bytes=24 * 10**9,
        fixed_bytes_per_gpu=15 * 10**9,
    )
    return render_plan(ServingPlan(**(args | kw)), image, extra=extra)


@pytest.mark.parametrize(
    "props",
    [
        ServingProperties(),
        _worked_example(extra={"option.enable_prefix_caching": True, "job_queue_size": 100}),
        _worked_example(image=TRT, dtype="bf16", revision="a1b2c3d"),
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
              "option.async_mode=False\noption.max_num_tokens=16384\noption.tokenizer=x\n")
    assert p.engine == "MPI" and p.async_mode is False
    assert p.max_num_tokens == 16384
    assert p.extra == {"option.tokenizer": "x"}


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
    with pytest.raises(ValueError, match="below the planned 4"):
        _worked_example(extra={"option.max_rolling_batch_size": 2})
    with pytest.raises(ValueError, match="below the planned 4096"):
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
    mpi = to_env(_worked_example(image=TRT))
    assert mpi["OPTION_MPI_MODE"] == "true" and mpi["OPTION_ROLLING_BATCH"] == "trtllm"
    # one variable per entry (engine=Python needs none)
    assert len(env) == len(_worked_example(
        extra={"job_queue_size": 64, "option.enable_lora": True}).entries()) - 1


# ---- exact messages and boundaries -----------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("option.x=\n", "value of option.x: empty"),
    ("engine=Python\noption.rolling_batch=trtllm\n",
     "option.rolling_batch=trtllm needs engine=MPI or option.mpi_mode"),
    ("option.rolling_batch=lmi-dist\n", "option.rolling_batch: option.rolling_batch=lmi-dist is "
                                        "gone from LMI v15; use vllm (async mode) or trtllm"),
    ("option.gpu_memory_utilization=abc\n", "value of option.gpu_memory_utilization: a number, "
                                            "got 'abc'"),
    ("option.gpu_memory_utilization=1.5\n", "option.gpu_memory_utilization: Input should be less "
                                            "than or equal to 1"),
    ("option.tensor_parallel_degree=x\n", "value of option.tensor_parallel_degree: a whole "
                                          "number, got 'x'"),
    ("option.async_mode=yes\n", "value of option.async_mode: true or false, got 'yes'"),
    ("option.x=a\\b\n", "value of option.x: backslashes are not allowed (Java properties "
                        "escape)"),
    ("option.x=caf\u00e9\n", "value of option.x: only ASCII (Java reads properties files as "
                             "ISO-8859-1)"),
    ("option.=1\n", "key 'option.': option name missing after 'option.'"),
    ("no separator here\n", "line 1: expected key=value, got 'no separator here'"),
])
def test_parse_errors_are_one_line_naming_the_key(text, message):
    with pytest.raises(ValueError) as err:
        parse(text)
    assert str(err.value) == message


def test_values_with_surrounding_whitespace_are_rejected():
    with pytest.raises(ValueError) as err:
        ServingProperties(extra={"option.x": "a "})
    assert "value of option.x: leading or trailing whitespace would be stripped" in str(
        err.value)


def test_parse_tensor_parallel_max_and_comments_and_values_with_equals():
    p = parse("# c\n! also a comment\n\noption.tensor_parallel_degree=max\n"
              "option.tokenizer_args=a=b\n")
    assert p.tensor_parallel_degree == "max"
    assert p.extra == {"option.tokenizer_args": "a=b"}


def test_to_env_names_replace_dots_and_dashes():
    env = to_env(ServingProperties(extra={"option.foo-bar.baz": "1", "gpu.maxWorkers": "2"}))
    assert env == {"OPTION_TRUST_REMOTE_CODE": "false", "OPTION_FOO_BAR_BAZ": "1",
                   "SERVING_GPU_MAXWORKERS": "2"}


def test_properties_for_bounds_and_messages():
    p = _worked_example(max_batch=1, max_input_tokens=1, max_output_tokens=1)
    assert (p.max_rolling_batch_size, p.max_model_len) == (1, 2)
    with pytest.raises(ValueError) as err:
        _worked_example(dtype="fp64")
    assert str(err.value) == ("model.dtype: 'fp64': one of fp32, fp16, bf16, fp8, auto "
                              "(int8/int4 checkpoints are served as auto)")
    with pytest.raises(ValueError) as err:
        _worked_example(extra={"option.x": [1]})
    assert str(err.value) == "value of option.x: a string, number or boolean"
    with pytest.raises(ValueError) as err:
        _worked_example(extra={"option.max_model_len": "lots"})
    assert str(err.value) == "value of option.max_model_len: a whole number, got 'lots'"


def test_user_options_equal_to_the_plan_are_accepted():
    p = _worked_example(extra={"option.max_rolling_batch_size": 4, "option.max_model_len": 4096})
    assert (p.max_rolling_batch_size, p.max_model_len) == (4, 4096)
