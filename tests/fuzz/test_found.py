"""Inputs the fuzz tests (test_fuzz_cli.py) found to end in a traceback, a second error line
or an unreadable one, kept as explicit tests: each failed before its fix."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.fuzz.harness import check, run_cli, sandbox
from tests.fuzz.strategies import TINY

PLAN = ["plan", "--model", "model", "--max-input-tokens", "64", "--max-output-tokens", "16"]


def tiny_model(root) -> None:
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text(json.dumps(TINY))


@pytest.mark.parametrize(("concurrency", "line"), [
    # OverflowError: int too large to convert to float, in the planner's GB figures
    ("1" * 300, "lmiflow: error: argument --concurrency: must be at most 100,000, got "
                "1111111111111111111111111111111111111..."),
    # an error line of 200 escaped characters: the flag's value is cut after repr
    ("\U00018d09" * 200, "lmiflow: error: argument --concurrency: must be a positive integer, "
                         "got " + repr("\U00018d09" * 200)[:37] + "..."),
])
def test_plan_flags_the_fuzzer_found(concurrency, line):
    with sandbox() as root:
        tiny_model(root)
        assert check(root, [*PLAN, "--concurrency", concurrency]) == 2
        assert run_cli([*PLAN, "--concurrency", concurrency])[2] == line + "\n"


def test_plan_flags_share_the_configs_bounds():
    with sandbox() as root:
        tiny_model(root)
        for flag, most in (("--max-input-tokens", 2_000_000), ("--max-output-tokens", 1_000_000),
                           ("--concurrency", 100_000)):
            argv = [*PLAN, "--concurrency", "1"]
            argv[argv.index(flag) + 1] = str(most + 1)
            assert run_cli(argv)[0] == 2
            argv[argv.index(flag) + 1] = str(most)
            assert run_cli(argv)[0] in (0, 2)  # at the bound: planned (or too big to fit)
        assert run_cli([*PLAN, "--concurrency", "1", "--max-usd-per-hour", "nan"])[2] == (
            "lmiflow: error: argument --max-usd-per-hour: must be a positive number, got nan\n")


@pytest.mark.parametrize(("key", "line"), [
    # a key with a line break printed two error lines ("lmiflow: error: " and the rest)
    ("\r", "lmiflow: error: '\\r': unknown field (not part of the config)"),
    ("a\nb", "lmiflow: error: 'a\\nb': unknown field (not part of the config)"),
    ("x" * 5000, "lmiflow: error: '" + "x" * 36 + "...: unknown field (not part of the config)"),
])
def test_config_keys_the_fuzzer_found(key, line):
    with sandbox() as root:
        tiny_model(root)
        cfg = {"name": "fuzz-demo", "model": {"id": "model", "dtype": "fp32"},
               "workload": {"max_input_tokens": 256, "max_output_tokens": 32, "concurrency": 2},
               "target": {"kind": "local"}, key: 0}
        (root / "c.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
        assert check(root, ["deploy", "c.yaml", "--dry-run"]) == 2
        assert run_cli(["deploy", "c.yaml", "--dry-run"])[2] == line + "\n"


def test_a_long_value_quoted_in_a_message_is_cut():
    """instance.inference_ami_version of 200 characters was echoed whole (a 500-character
    line); every quoted value of every message is cut at the one exit-2 path."""
    with sandbox() as root:
        cfg = {"name": "fuzz-demo", "model": {"id": "m", "dtype": "bf16"},
               "workload": {"max_input_tokens": 256, "max_output_tokens": 32, "concurrency": 2},
               "target": {"kind": "sagemaker", "region": "us-east-1",
                          "role_arn": "arn:aws:iam::123456789012:role/SageMakerExecution",
                          "s3_uri": "s3://my-bucket/models/"},
               "instance": {"inference_ami_version": "0" * 200}}
        (root / "c.yaml").write_text(yaml.safe_dump(cfg))
        assert check(root, ["deploy", "c.yaml", "--dry-run"]) == 2
        err = run_cli(["deploy", "c.yaml", "--dry-run"])[2]
        assert err.startswith("lmiflow: error: instance.inference_ami_version: '" + "0" * 57
                              + "...' is not one of botocore's al2-ami-sagemaker-inference")
