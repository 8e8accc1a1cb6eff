"""`lmiflow plan` as users and acceptance checks call it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ["--model", "configs/models/llama-2-13b", "--dtype", "fp16", "--max-input-tokens",
           "3072", "--max-output-tokens", "1024", "--concurrency", "4"]


def lmiflow(*args, env=None):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    e.setdefault("LMIFLOW_STATE_DIR", "/nonexistent/lmiflow-test-state")  # no stored fits
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
        (["--model", "configs/models/llama-2-13b", "--max-tpot-ms", "-5"], "--max-tpot-ms"),
        (["--model", "configs/models/llama-2-13b", "--max-ttft-ms", "nan"], "--max-ttft-ms"),
        (["--model", "configs/models/llama-2-13b", "--instance-count", "3",
          "--max-instance-count", "2"], "--max-instance-count"),
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


PREDICTED = {"ttft_ms", "tpot_ms", "e2e_ms", "output_tokens_per_s", "calibrated"}
LLAMA8B = ["--model", "configs/models/llama-3.1-8b", "--max-input-tokens", "2048",
           "--max-output-tokens", "512", "--concurrency", "16",
           "--instance-types", "ml.g5.*,ml.g6.*"]


def plan_json(*args):
    r = lmiflow("plan", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_plan_json_predicts_latency_for_fitting_and_forced_options():
    out = plan_json(*LLAMA8B)
    for o in out["options"]:
        if o["fits"]:
            assert set(o["predicted"]) >= PREDICTED and o["predicted"]["calibrated"] is False
    forced = plan_json(*EXAMPLE, "--instance-type", "ml.p4d.24xlarge",
                       "--tensor-parallel-degree", "2")
    (only,) = forced["options"]
    assert set(only["predicted"]) >= PREDICTED and only["predicted"]["tpot_ms"] > 0


def test_latency_limits_bind_only_when_tight():
    plain = plan_json(*LLAMA8B)["chosen"]
    loose = plan_json(*LLAMA8B, "--max-tpot-ms", "10000", "--max-ttft-ms", "600000")["chosen"]
    same = ("instance_type", "tensor_parallel_degree", "instance_count", "usd_per_hour")
    assert [loose[k] for k in same] == [plain[k] for k in same]
    limit = plain["predicted"]["tpot_ms"] * 0.6
    tight = plan_json(*LLAMA8B, "--max-tpot-ms", f"{limit:.1f}")
    assert tight["chosen"]["predicted"]["tpot_ms"] <= limit
    rejected = [o for o in tight["options"] if o["binding"] == "latency"]
    assert rejected and all("predicted TPOT p50" in o["reason"] and "--max-tpot-ms" in o["reason"]
                            for o in rejected)


def test_table_shows_latency_cost_and_layout():
    r = lmiflow("plan", *LLAMA8B, "--max-tpot-ms", "50", "--max-instance-count", "4")
    assert r.returncode == 0, r.stderr
    assert "TTFT" in r.stdout and "TPOT" in r.stdout
    assert "predicted p50 at 16 concurrent" in r.stdout
    wide = lmiflow("plan", *LLAMA8B, "--max-tpot-ms", "50", "--max-instance-count", "4", "--all",
                   env={"COLUMNS": "200"})
    header = next(line for line in wide.stdout.splitlines() if "instance" in line)
    assert "layout" in header and "$/1M" in header and "holds" in header


def lines_at(width: int, *args: str) -> list[str]:
    r = lmiflow(*args, env={"COLUMNS": str(width)})
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@pytest.mark.parametrize("extra", [[], ["--all"]])
def test_worked_example_reads_at_80_columns(extra):
    """No line longer than the terminal (or a CI log's 80), a number never split from its
    unit, the table's rows one line each."""
    lines = lines_at(80, "plan", *EXAMPLE, *extra)
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    assert "Chosen: ml.g6e.xlarge" in text and "weights 26.0 GB" in text
    assert not any(line.rstrip().endswith((" 26.0", " 41.0", " tp")) for line in lines)
    rows = [line for line in lines if line.split()[:1] == ["1"]]
    assert len(rows) == 1 and "ml.g6e.xlarge" in rows[0]
    # TTFT and TPOT each with its unit on the row ("957 ms", "1.2 s")
    assert len(re.findall(r"\b\d+(?:\.\d)? m?s\b", rows[0])) == 2
    assert sum("not planned:" in line for line in lines) == 1  # one entry per reason


def test_wide_terminal_gets_the_wide_table_with_all():
    lines = lines_at(200, "plan", *EXAMPLE, "--all")
    assert max(len(line) for line in lines) <= 200
    row = next(line for line in lines if line.split()[:2] == ["1", "ml.g6e.xlarge"])
    assert "1x1x4" in row  # 1 instance x 1 model copy x all 4 requests on it


def test_help_summarises_and_every_plan_flag_has_help():
    top = lmiflow("--help", env={"COLUMNS": "80"}).stdout
    assert "Size, deploy, benchmark and promote an open LLM" in top and "subcommand" not in top
    r = lmiflow("plan", "--help", env={"COLUMNS": "80"})
    from lmiflow.cli import build_parser

    plan = build_parser()._subparsers._group_actions[0].choices["plan"]
    assert all(a.help for a in plan._actions), [a.dest for a in plan._actions if not a.help]
    assert "Longest prompt" in r.stdout
    assert max(len(line) for line in (top + r.stdout).splitlines()) <= 80


def test_example_config_chooses_an_option_that_meets_its_tpot_gate(tmp_path):
    r = lmiflow("deploy", "configs/llama-3.1-8b-g5-g6.yaml", "--dry-run", "--report-dir",
                str(tmp_path), env={"LMIFLOW_STATE_DIR": str(tmp_path / "state"),
                                    "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    # 80 columns, except an identifier too long to have any (the image URI, on its own line).
    assert all(len(line) <= 80 or " " not in line for line in r.stdout.splitlines())
    report = json.loads((tmp_path / "report.json").read_text())
    chosen = report["plan"]["chosen"]
    assert chosen["predicted"]["tpot_ms"] <= 50 * 0.9  # the gate, with the planner's margin
    g6 = [o for o in report["plan"]["options"] if o["instance_type"] == "ml.g6.xlarge"]
    assert g6 and g6[0]["binding"] == "latency" and "gate 50 ms" in g6[0]["reason"]


def test_calibrate_shows_fits_and_rejects_a_damaged_store(tmp_path):
    r = lmiflow("calibrate", "--store", str(tmp_path / "none.json"))
    assert r.returncode == 0 and "No records yet" in r.stdout
    assert not (tmp_path / "none.json").exists()
    from lmiflow.sizing.calibration import CalibrationStore

    from tests.core.test_calibration_store import a_record

    store = tmp_path / "calibration.json"
    store.write_text(CalibrationStore(records=[a_record(1.5, c) for c in (1, 4, 16)])
                     .model_dump_json())
    r = lmiflow("calibrate", "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert "NVIDIA L4 / vllm: 3 record(s)" in r.stdout and "memory efficiency" in r.stdout
    fits = json.loads(lmiflow("calibrate", "--store", str(store), "--json").stdout)["fits"]
    assert fits[0]["mape_after"]["tpot_ms"] < fits[0]["mape_before"]["tpot_ms"]
    # The plan uses the store: L4 predictions are calibrated, A10G ones are not.
    out = plan_json(*LLAMA8B, "--calibration", str(store))
    by_acc = {o["accelerator"]: o["predicted"]["calibrated"] for o in out["options"]
              if o["predicted"]}
    assert by_acc == {"NVIDIA L4": True, "NVIDIA A10G": False}
    store.write_text("{broken")
    r = lmiflow("calibrate", "--store", str(store))
    assert r.returncode == 2 and "--store" in r.stderr and "Traceback" not in r.stderr


def test_a_reader_that_stops_early_gets_no_traceback():
    """`lmiflow plan --json | head -1`: the JSON is larger than a pipe holds."""
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "LMIFLOW_STATE_DIR": "/nonexistent/state"}
    p = subprocess.Popen([sys.executable, "-m", "lmiflow", "plan", *EXAMPLE, "--json"], cwd=ROOT,
                         env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"{\n"
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141  # 128 + SIGPIPE, as a shell reports it
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_calibrate_config_reads_its_targets_store(tmp_path):
    """--config: the store a deploy of that config uses (the local target's state dir here;
    SageMaker's S3 one is exercised on moto in tests/e2e/test_sagemaker_weights.py)."""
    from lmiflow.sizing.calibration import CalibrationStore

    from tests.core.test_calibration_store import a_record

    state = tmp_path / "state"
    state.mkdir()
    (state / "calibration.json").write_text(
        CalibrationStore(records=[a_record(1.5, c) for c in (1, 4)]).model_dump_json())
    env = {"LMIFLOW_STATE_DIR": str(state)}
    r = lmiflow("calibrate", "--config", "configs/local-demo.yaml", "--json", env=env)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert (shown["store"], shown["records"]) == (str(state / "calibration.json"), 2)
    assert [f["accelerator"] for f in shown["fits"]] == ["NVIDIA L4"]
    # the refit is written back through the target
    assert CalibrationStore.model_validate_json(
        (state / "calibration.json").read_text()).fits[0].records == 2
    # a SageMaker config without an S3 prefix keeps no store: exit 2 naming the flag
    cfg = yaml.safe_load((ROOT / "configs" / "llama-3.1-8b-g5-g6.yaml").read_text())
    cfg["target"].pop("s3_uri", None)
    cfg["target"]["packaging"] = "env"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = lmiflow("calibrate", "--config", str(tmp_path / "c.yaml"), env=env)
    assert r.returncode == 2 and "--config" in r.stderr and "s3_uri" in r.stderr, r.stderr
