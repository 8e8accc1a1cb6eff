"""A model directory whose config.json disagrees with its safetensors weights exits 2 at plan
time, naming the key and both values, before anything is created (issue 24: it passed the
plan and the dry run and failed only when the server loaded it). The model is the real demo
model, its config edited after the weights were written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmiflow.cli import main

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]
PLAN = ["--max-input-tokens", "16", "--max-output-tokens", "8", "--concurrency", "1", "--json"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from tests.session_files import session_demo_model

    return session_demo_model(tmp_path_factory)


@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    (tmp_path / "state").mkdir()
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def edited(demo: Path, where: Path, **changes) -> Path:
    model = where / "model"
    shutil.copytree(demo, model)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, **changes}))
    return model


@pytest.mark.parametrize(("changes", "line"), [
    ({"hidden_size": 128}, "model (model/config.json:hidden_size): 128, but the weights hold 64 "
                           "(model.embed_tokens.weight is 512 x 64)"),
    ({"num_hidden_layers": 4}, "model (model/config.json:num_hidden_layers): 4, but the weights "
                               "hold 2 decoder layers (model.layers.0 to model.layers.1)"),
    ({"intermediate_size": 256}, "model (model/config.json:intermediate_size): 256, but the "
                                 "weights hold model.layers.0.mlp.gate_proj.weight as 128 x 64"),
    ({"tie_word_embeddings": False}, "model (model/config.json:tie_word_embeddings): false, but "
                                     "the weights hold no lm_head.weight (the output layer "
                                     "would be left random)"),
    ({"attention_bias": True}, "model (model/config.json): describes 107,200 parameters, but "
                               "the weights hold 106,816"),
])
def test_plan_names_the_key_and_both_values(demo, isolated, capsys, changes, line):
    model = edited(demo, isolated, **changes)
    assert main(["plan", "--model", "model", *PLAN]) == 2
    assert capsys.readouterr().err == f"lmiflow: error: {line}\n"
    assert model.is_dir()


def test_the_unedited_model_plans_with_its_exact_count(demo, isolated, capsys):
    edited(demo, isolated)
    assert main(["plan", "--model", "model", *PLAN]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["parameters"] == 106_816


def test_dry_run_and_a_real_process_exit_2_creating_nothing(demo, isolated, capsys):
    model = edited(demo, isolated, hidden_size=128)
    config = yaml.safe_load((ROOT / "configs" / "local-demo.yaml").read_text())
    config["model"]["id"] = str(model)
    (isolated / "c.yaml").write_text(yaml.safe_dump(config))
    before = sorted(p for p in isolated.rglob("*"))
    assert main(["deploy", "c.yaml", "--dry-run", "--report-dir", "r"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmiflow: error: model (model/config.json:hidden_size): 128, but")
    env = {**os.environ, "LMIFLOW_STATE_DIR": str(isolated / "state"), "HF_HUB_OFFLINE": "1",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    r = subprocess.run([sys.executable, "-m", "lmiflow", "deploy", "c.yaml", "--report-dir", "r"],
                       cwd=isolated, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "hidden_size): 128, but the weights hold 64" in r.stderr
    assert sorted(p for p in isolated.rglob("*")) == before  # no report, no state


def test_a_weights_file_that_is_not_safetensors(demo, isolated, capsys):
    model = edited(demo, isolated)
    (model / "model.safetensors").write_bytes(b"\xff" * 64)
    assert main(["plan", "--model", "model", *PLAN]) == 2
    assert capsys.readouterr().err == (
        "lmiflow: error: model: model/model.safetensors is not a safetensors file\n")
