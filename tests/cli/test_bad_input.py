"""The bad-input corpus: each malformed config or flag exits 2 with one line naming the field,
no traceback, nothing created, and no cloud call made (AWS_ENDPOINT_URL points nowhere)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmiflow.cli import main

ROOT = Path(__file__).resolve().parents[2]
GOOD = {
    "name": "bad-input-test",
    "model": {"id": str(ROOT / "configs" / "models" / "llama-3.1-8b"), "dtype": "bf16"},
    "workload": {"max_input_tokens": 1024, "max_output_tokens": 128, "concurrency": 2},
    "target": {"kind": "local"},
}
SM = {"kind": "sagemaker", "region": "us-east-1",
      "role_arn": "arn:aws:iam::123456789012:role/SageMakerExecution",
      "s3_uri": "s3://my-bucket/models/"}


def with_(path: str, value, base=None):
    if isinstance(base, str):
        base = yaml.safe_load(base)
    data = yaml.safe_load(yaml.safe_dump(base or GOOD))
    node = data
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is KeyError:
        del node[leaf]
    else:
        node[leaf] = value
    return yaml.safe_dump(data)


SAGEMAKER = yaml.safe_load(with_("target", SM))
CASES = {
    "unparseable yaml": ("name: [oops\n", "CONFIG"),
    "empty file": ("", "config"),
    "not a mapping": ("- a\n- b\n", "config"),
    "unknown top-level key": (with_("colour", "blue"), "colour"),
    "unknown nested key": (with_("model.dtyp", "fp16"), "model.dtyp"),
    "missing name": (with_("name", KeyError), "name"),
    "name sagemaker rejects": (with_("name", "my_endpoint"), "name"),
    "name too long": (with_("name", "a" * 64), "name"),
    "model id with line break": (with_("model.id", "org/model\nengine=MPI"), "model.id"),
    "zero input tokens": (with_("workload.max_input_tokens", 0), "workload.max_input_tokens"),
    "concurrency not a number": (with_("workload.concurrency", "many"), "workload.concurrency"),
    "unknown dtype": (with_("model.dtype", "fp12"), "model.dtype"),
    "unknown target kind": (with_("target.kind", "azure"), "target.kind"),
    "malformed role arn": (with_("target.role_arn", "arn:aws:iam::12:role/x", SAGEMAKER),
                           "target.role_arn"),
    "malformed s3 uri": (with_("target.s3_uri", "https://bucket/x", SAGEMAKER),
                         "target.s3_uri"),
    "bogus region": (with_("target.region", "moon-1", SAGEMAKER), "target.region"),
    "sagemaker without role": (with_("target.role_arn", KeyError, SAGEMAKER),
                               "target.role_arn"),
    "gate on unknown metric": (with_("gates", [{"metric": "vibes", "threshold": 1}]),
                               "gates.0.metric"),
    "latency gate without percentile": (
        with_("gates", [{"metric": "ttft_ms", "stat": "value", "threshold": 1}]), "gates.0"),
    # a gate no measurement can meet (issue 24: a LatencyLimit traceback from the planner)
    "latency gate below zero": (
        with_("gates", [{"metric": "ttft_ms", "stat": "p95", "op": "<=", "threshold": -1}]),
        "gates.0.threshold: -1 can never be met: ttft_ms is always above 0"),
    "latency gate at zero": (
        with_("gates", [{"metric": "tpot_ms", "stat": "p50", "op": "<", "threshold": 0}]),
        "gates.0.threshold"),
    "error rate below zero": (
        with_("gates", [{"metric": "error_rate", "stat": "value", "op": "<", "threshold": 0}]),
        "gates.0.threshold: 0 can never be met: error_rate is never below 0"),
    "error rate above one": (
        with_("gates", [{"metric": "error_rate", "stat": "value", "op": ">", "threshold": 1}]),
        "gates.0.threshold"),
    "empty benchmark levels": (with_("benchmark.concurrency", []), "benchmark.concurrency"),
    "tensor parallel 3": (with_("instance.tensor_parallel_degree", 3),
                          "instance.tensor_parallel_degree"),
    "gpu memory utilization above 1": (with_("instance.gpu_memory_utilization", 1.5),
                                       "instance.gpu_memory_utilization"),
    "max_count below count": (with_("instance", {"count": 3, "max_count": 2}),
                              "instance.max_count"),
    "canary above half the fleet": (with_("promotion.canary_size_pct", 80),
                                    "promotion.canary_size_pct"),
    "canary on one instance": (with_("promotion.strategy", "CANARY", SAGEMAKER),
                               "promotion.strategy"),
    "canary smaller than one instance": (
        with_("promotion", {"strategy": "CANARY", "canary_size_pct": 10},
              yaml.safe_load(with_("instance.count", 4, SAGEMAKER))),
        "promotion.canary_size_pct"),
    "linear step smaller than one instance": (
        with_("promotion", {"strategy": "LINEAR", "linear_step_pct": 10},
              yaml.safe_load(with_("instance.count", 5, SAGEMAKER))),
        "promotion.linear_step_pct"),
    "termination wait above the API's bound": (with_("promotion.termination_wait_s", 4000),
                                              "promotion.termination_wait_s"),
    "inference AMI botocore does not know": (
        with_("instance.inference_ami_version", "al2-ami-sagemaker-inference-gpu-9", SAGEMAKER),
        "instance.inference_ami_version"),
    "role from another partition": (with_("target.region", "cn-north-1", SAGEMAKER),
                                    "target.role_arn"),
    "serving option injecting a line": (
        with_("serving.options", {"option.x": "1\nengine=MPI"}), "serving.options"),
    "serving option key with =": (with_("serving.options", {"option.a=b": "1"}),
                                  "serving.options"),
    "fits nowhere under the constraints": (
        with_("instance.allow", ["ml.g4dn.xlarge"],
              with_("model.id", str(ROOT / "configs" / "models" / "llama-3.1-70b"),
                    yaml.safe_load(with_("target", SM)))), "plan"),
    "model directory without config.json": (with_("model.id", "/nonexistent/model"), "model"),
    # $ matches before a final newline: every check is a full match
    "name with a trailing newline": (with_("name", "abc\n"), "name"),
    "role arn with a trailing newline": (
        with_("target.role_arn", SM["role_arn"] + "\n", SAGEMAKER), "target.role_arn"),
    "s3 uri with a trailing newline": (with_("target.s3_uri", "s3://my-bucket/p\n", SAGEMAKER),
                                       "target.s3_uri"),
    "option key with a trailing newline": (with_("serving.options", {"option.x\n": 1}),
                                           "serving.options"),
    "image uri that is not an image": (with_("serving.image_uri", "x y", SAGEMAKER),
                                       "serving.image_uri"),
    # limits checked when the config is read (each used to fail after a candidate existed)
    "boolean as a token count": (with_("workload.max_input_tokens", True),
                                 "workload.max_input_tokens"),
    "NaN gate threshold": (with_("gates", [{"metric": "ttft_ms", "threshold": float("nan")}]),
                           "gates.0.threshold"),
    "infinite regression bound": (with_("regression.max_regression_pct", float("inf")),
                                  "regression.max_regression_pct"),
    "gate on a level not benchmarked": (
        with_("gates", [{"metric": "ttft_ms", "threshold": 500, "concurrency": 8}]),
        "gates.0.concurrency"),
    "contradicting gates": (with_("gates", [
        {"metric": "ttft_ms", "stat": "p95", "op": "<=", "threshold": 100},
        {"metric": "ttft_ms", "stat": "p95", "op": ">=", "threshold": 200}]), "gates.1"),
    "benchmark prompt of a billion tokens": (with_("benchmark.input_tokens", 10**9),
                                             "benchmark.input_tokens"),
    "benchmark answer of a billion tokens": (with_("benchmark.max_new_tokens", 10**9),
                                             "benchmark.max_new_tokens"),
    "duplicate key": ("name: a\n" + with_("name", "b"), "name"),
}

# Config and model limits that need a model small enough to plan on this machine.
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 512, "max_position_embeddings": 2048}
TINY_CASES = {
    # (config.json changes, deployment config changes, field named)
    "concurrency over the server's batch limit": (
        {}, {"workload.concurrency": 100_000, "workload.max_input_tokens": 8,
             "workload.max_output_tokens": 8}, "workload.concurrency"),
    "context below the server's minimum": (
        {}, {"workload.max_input_tokens": 8, "workload.max_output_tokens": 4,
             "smoke_test.max_new_tokens": 4},
        "workload.max_input_tokens"),
    "max_model_len beyond the model": (
        {}, {"serving.options": {"option.max_model_len": 10**12}}, "serving.options"),
    "zero key/value heads": ({"num_key_value_heads": 0}, {}, "model (tiny/config.json:num_key_"),
    "more key/value heads than heads": ({"num_key_value_heads": 8}, {},
                                        "model (tiny/config.json:num_key_"),
    "hidden size not divisible by heads": ({"hidden_size": 66}, {},
                                           "model (tiny/config.json:hidden_size)"),
    "config.json nested 100k deep": ("[" * 100_000 + "]" * 100_000, {}, "model"),
    # numbers at the edges (issue 24): each a traceback before, now the file, key and reason
    "sliding window Infinity": ({"sliding_window": math.inf}, {},
                                "model (tiny/config.json:sliding_window): must be a whole"),
    "vocab of 10^400": ({"vocab_size": 10**400}, {},
                        "model (tiny/config.json:vocab_size): must be a positive integer no "
                        "larger than 16,777,216, got a 401-digit number"),
    "context Infinity": ({"max_position_embeddings": math.inf}, {},
                         "model (tiny/config.json:max_position_embeddings): must be a positive "
                         "integer, got inf"),
    "context 1.5": ({"max_position_embeddings": 1.5}, {},
                    "model (tiny/config.json:max_position_embeddings)"),
    "context NaN": ({"max_position_embeddings": math.nan}, {},
                    "model (tiny/config.json:max_position_embeddings)"),
    "rope_theta Infinity": ({"rope_theta": math.inf}, {}, "model (tiny/config.json:rope_theta)"),
    "nested rope_theta negative": ({"rope_parameters": {"rope_theta": -1}}, {},
                                   "model (tiny/config.json:rope_parameters.rope_theta)"),
    "rms_norm_eps NaN": ({"rms_norm_eps": math.nan}, {}, "model (tiny/config.json:rms_norm_eps)"),
    "rms_norm_eps 0": ({"rms_norm_eps": 0}, {}, "model (tiny/config.json:rms_norm_eps)"),
    "negative heads": ({"num_attention_heads": -4}, {},
                       "model (tiny/config.json:num_attention_heads)"),
    "hidden size as a string": ({"hidden_size": "64"}, {}, "model (tiny/config.json:hidden_size)"),
    "sliding window as a string": ({"sliding_window": "x"}, {},
                                   "model (tiny/config.json:sliding_window)"),
    "tied embeddings as a string": ({"tie_word_embeddings": "no"}, {},
                                    "model (tiny/config.json:tie_word_embeddings)"),
    "architectures not a list": ({"architectures": 5}, {},
                                 "model (tiny/config.json:architectures)"),
    "model_type a number": ({"model_type": 3}, {}, "model (tiny/config.json:model_type)"),
    "more experts per token than experts": (
        {"num_local_experts": 2, "num_experts_per_tok": 3}, {},
        "model (tiny/config.json:num_experts_per_tok)"),
    "MLA without its head sizes": ({"model_type": "deepseek_v3", "kv_lora_rank": 16}, {},
                                   "model (tiny/config.json:qk_nope_head_dim)"),
    "quantization group not a number": (
        {"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": "x"}}, {},
        "model (tiny/config.json:quantization_config.group_size)"),
    "text_config with an infinite window": (
        json.dumps({"model_type": "llava", "text_config": {**TINY, "sliding_window": math.inf}}),
        {}, "model (tiny/config.json:text_config.sliding_window)"),
    "an integer of 5000 digits": ('{"vocab_size": ' + "9" * 5000 + "}", {}, "model: /"),
}


@pytest.mark.parametrize("case", sorted(TINY_CASES))
def test_model_and_server_limits_exit_2_at_plan_time(case, isolated, capsys):
    model_changes, config_changes, field = TINY_CASES[case]
    model = isolated / "tiny"
    model.mkdir()
    text = (model_changes if isinstance(model_changes, str)
            else json.dumps({**TINY, **model_changes}))
    (model / "config.json").write_text(text)
    config = with_("model.id", str(model))
    for dotted, value in config_changes.items():
        config = with_(dotted, value, config)
    check_exits_2(config, field, isolated, capsys)



@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    """A working directory with an empty local-target state folder, as after `make demo`'s
    first run: anything a bad run wrote there would show."""
    (tmp_path / "state").mkdir()
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # any AWS call would fail
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("options", [{"option.x\n": 1}, {"option.a=b": "1"},
                                     {"option.x": "1\nengine=MPI"}, {"foo": 1}])
def test_a_malformed_serving_option_is_refused_by_the_config_itself(options):
    """Before any plan: rendering comes after planning, so a check left to it would let the
    plan's verdict (on the local target, the RAM free at that moment) decide the error."""
    from pydantic import ValidationError

    from lmiflow.spec import DeploymentSpec

    with pytest.raises(ValidationError) as info:
        DeploymentSpec.model_validate(yaml.safe_load(with_("serving.options", options)))
    assert [e["loc"] for e in info.value.errors()] == [("serving", "options")]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_exits_2_naming_the_field(case, isolated, capsys):
    check_exits_2(*CASES[case], isolated, capsys)


def check_exits_2(text, field, isolated, capsys):
    cfg = isolated / "config.yaml"
    cfg.write_text(text)
    before = files_under(isolated)
    code = main(["deploy", str(cfg), "--report-dir", str(isolated / "report")])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lmiflow: error: {field}"), err
    assert "Traceback" not in err
    # nothing created: no report, and the state folder is still there and still empty
    assert (isolated / "state").is_dir()
    assert list((isolated / "state").iterdir()) == []
    assert files_under(isolated) == before
    assert not (isolated / "report").exists()


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_corpus_is_large_enough():
    assert len(CASES) >= 20


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["deploy", "missing.yaml"], "CONFIG"),
        (["deploy", "x.yaml", "--target", "azure"], "--target"),
        (["bench", "--url", "http://127.0.0.1:9/invocations", "--concurrency", "0"],
         "concurrency"),
    ],
)
def test_bad_flags_in_a_real_process(args, needle, isolated):
    env = {**os.environ, "LMIFLOW_STATE_DIR": str(isolated / "state"),
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    r = subprocess.run([sys.executable, "-m", "lmiflow", *args], cwd=isolated, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
