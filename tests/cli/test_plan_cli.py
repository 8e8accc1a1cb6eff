"""`lmiflow plan` as users and acceptance checks call it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ["--model", "configs/models/llama-2-13b", "--dtype", "fp16", "--max-input-tokens",
           "3072", "--max-output-tokens", "1024", "--concurrency", "4"]


def lmiflow(*args, env=None):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "lmiflow", *args], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=120)


def test_plan_json_contract():
    r = lmiflow("plan", *EXAMPLE, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"]["parameters"] == 13_015_864_320
    assert out["model"]["kv_cache_bytes_per_token"] == 819_200
    assert set(out["memory"]) >= {"weights_bytes", "kv_cache_bytes", "overhead_bytes",
                                  "total_bytes"}
    keys = {"instance_type", "gpu_count", "gpu_memory_bytes", "tensor_parallel_degree",
            "model_copies", "fits", "reason", "per_gpu_required_bytes", "usd_per_hour",
            "max_concurrency"}
    assert all(keys <= set(o) for o in out["options"])
    assert out["chosen"] in out["options"]
    assert isinstance(out["options"][0]["gpu_memory_bytes"], int)


def test_plan_table_shows_breakdown_and_why_cheaper_fail():
    r = lmiflow("plan", *EXAMPLE)
    assert r.returncode == 0, r.stderr
    assert "819,200 bytes/token" in r.stdout
    assert "ml.g5.12xlarge" in r.stdout
    assert "Why the cheaper ones fail" in r.stdout and "weights 26.0 GB" in r.stdout


def test_plan_that_fits_nowhere_prints_null_chosen_and_exits_2():
    r = lmiflow("plan", "--model", "configs/models/deepseek-v3", "--dtype", "bf16",
                "--max-input-tokens", "4096", "--max-output-tokens", "1024",
                "--concurrency", "8", "--json")
    assert r.returncode == 2
    assert json.loads(r.stdout)["chosen"] is None
    assert "no option fits" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--model", "/nonexistent/dir"], "model"),
        (["--model", "configs/models/llama-2-13b", "--dtype", "fp12"], "--dtype"),
        (["--model", "configs/models/llama-2-13b", "--kv-cache-dtype", "int4"],
         "--kv-cache-dtype"),
        (["--model", "configs/models/llama-2-13b", "--max-input-tokens", "0"],
         "--max-input-tokens"),
        (["--model", "configs/models/llama-2-13b", "--concurrency", "-3"], "--concurrency"),
        (["--model", "configs/models/llama-2-13b", "--max-output-tokens", "x"],
         "--max-output-tokens"),
    ],
)
def test_bad_input_exits_2_naming_the_field(args, field):
    base = {"--max-input-tokens": "100", "--max-output-tokens": "10", "--concurrency": "1"}
    flags = dict(zip(args[::2], args[1::2], strict=True))
    full = []
    for k, v in {**base, **flags}.items():
        full += [k, v]
    r = lmiflow("plan", *full, "--json")
    assert r.returncode == 2, r.stdout
    assert field in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2


def test_config_without_needed_fields(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    r = lmiflow("plan", "--model", str(tmp_path), "--max-input-tokens", "10",
                "--max-output-tokens", "10", "--concurrency", "1")
    assert r.returncode == 2 and "hidden_size" in r.stderr and "Traceback" not in r.stderr


def test_missing_config_json(tmp_path):
    r = lmiflow("plan", "--model", str(tmp_path), "--max-input-tokens", "10",
                "--max-output-tokens", "10", "--concurrency", "1")
    assert r.returncode == 2 and "config.json" in r.stderr
