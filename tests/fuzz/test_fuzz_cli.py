"""Property: whatever a user writes in a model's config.json, a deployment config or a flag,
`lmiflow plan` and `lmiflow deploy --dry-run` end with exit 0 or 2, never a traceback, and
create nothing on exit 2 (issue 24). In-process through the CLI's main (fast); a few real
processes check the exit codes as a shell sees them. `make test` runs a small fixed budget,
`make fuzz` a long random run (conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.harness import ENV, check, sandbox
from tests.fuzz.strategies import (
    SAGEMAKER,
    TINY,
    VALUES,
    config_json_text,
    deploy_configs,
    model_configs,
    safetensors_bytes,
    tensor_shapes,
)

PLAN = ["--max-input-tokens", "64", "--max-output-tokens", "16", "--concurrency", "2",
        "--json"]


@given(cfg=model_configs(), data=st.data())
def test_plan_on_any_model_config(cfg, data):
    with sandbox() as root:
        model = root / "model"
        model.mkdir()
        (model / "config.json").write_text(config_json_text(cfg), encoding="utf-8")
        if isinstance(cfg, dict) and data.draw(st.booleans(), label="with weights"):
            shapes = data.draw(tensor_shapes(cfg), label="shapes")
            (model / "model.safetensors").write_bytes(safetensors_bytes(shapes))
        check(root, ["plan", "--model", "model", *PLAN])


@given(cfg=deploy_configs("model"), dry_json=st.booleans())
def test_dry_run_of_any_deployment_config(cfg, dry_json):
    with sandbox() as root:
        (root / "model").mkdir()
        (root / "model" / "config.json").write_text(json.dumps(TINY))
        (root / "c.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
        argv = ["deploy", "c.yaml", "--dry-run", "--report-dir", "report"]
        prefect_before = "prefect" in sys.modules  # another test may have loaded it
        code = check(root, argv + (["--json"] if dry_json else []))
        if code == 0:
            assert json.loads((root / "report" / "report.json").read_text())["status"] == \
                "planned"
        assert prefect_before or "prefect" not in sys.modules  # a dry run never loads Prefect


@given(cfg=model_configs(), sagemaker=st.booleans())
def test_dry_run_on_any_model_config(cfg, sagemaker):
    """The model's values reach further in a deploy: the context limit the server is given,
    the window, the image's engine, the AWS requests."""
    with sandbox() as root:
        (root / "model").mkdir()
        (root / "model" / "config.json").write_text(config_json_text(cfg), encoding="utf-8")
        deploy = {"name": "fuzz-demo", "model": {"id": "model", "dtype": "auto"},
                  "workload": {"max_input_tokens": 256, "max_output_tokens": 32,
                               "concurrency": 2},
                  "target": dict(SAGEMAKER) if sagemaker else {"kind": "local"}}
        (root / "c.yaml").write_text(yaml.safe_dump(deploy))
        check(root, ["deploy", "c.yaml", "--dry-run"])


@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(
    lambda b: b.decode("latin-1"))))
def test_dry_run_of_any_text(text):
    with sandbox() as root:
        (root / "c.yaml").write_bytes(text.encode("utf-8", "surrogatepass"))
        check(root, ["deploy", "c.yaml", "--dry-run"])


@given(flags=st.lists(st.one_of(VALUES.map(str), st.integers(-3, 10**12).map(str)),
                      min_size=3, max_size=3))
def test_plan_flags(flags):
    with sandbox() as root:
        (root / "model").mkdir()
        (root / "model" / "config.json").write_text(json.dumps(TINY))
        check(root, ["plan", "--model", "model", "--max-input-tokens", flags[0],
                     "--max-output-tokens", flags[1], "--concurrency", flags[2]])


# ---- a few real processes: the exit codes as a shell sees them --------------------------------

REAL = [
    ({**TINY, "sliding_window": float("inf")}, 2),
    ({**TINY, "vocab_size": 10**400}, 2),
    (TINY, 0),
]


def test_real_processes_exit_0_or_2_without_a_traceback():
    for cfg, expected in REAL:
        with sandbox() as root:
            (root / "model").mkdir()
            (root / "model" / "config.json").write_text(config_json_text(cfg))
            r = subprocess.run([sys.executable, "-m", "lmiflow", "plan", "--model", "model",
                                *PLAN], cwd=root, env={**os.environ, **ENV},
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == expected, r.stderr
            assert "Traceback" not in r.stderr
            assert (r.stderr.count("\n") == 1) == (expected == 2), r.stderr
