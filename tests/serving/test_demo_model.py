"""The demo model is a real Hugging Face Llama: it loads, generates, tokenizes and chats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmiflow.serving.demo_model import build_demo_model, ensure_demo_model  # noqa: E402


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.session_files import session_demo_model

    return session_demo_model(tmp_path_factory)


def test_files_and_config_are_a_gqa_llama(demo_model_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (demo_model_dir / name).is_file(), name
    cfg = json.loads((demo_model_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    assert 64 <= cfg["hidden_size"] <= 128 and 2 <= cfg["num_hidden_layers"] <= 4
    tok_cfg = json.loads((demo_model_dir / "tokenizer_config.json").read_text())
    assert "{% for message in messages %}" in tok_cfg["chat_template"]


def test_tokenizer_round_trips_any_text_and_has_a_chat_template(demo_model_dir: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(demo_model_dir)
    text = "Héllo, wörld! 日本語 🙂 tabs\tand\nnewlines"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text  # byte-level: nothing is lost
    assert tok.vocab_size == json.loads((demo_model_dir / "config.json").read_text())["vocab_size"]
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<s><|user|>hi<|end|><|assistant|>"


def test_model_loads_and_generates_with_its_kv_cache(demo_model_dir: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(demo_model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(demo_model_dir)
    ids = torch.tensor([tok("The quick brown fox")["input_ids"]])
    out = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 8)
    # The cached and the uncached forward agree: the KV cache really works on this model.
    no_cache = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                              use_cache=False)
    assert torch.equal(out, no_cache)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = load_file(build_demo_model(tmp_path / "a", seed=1) / "model.safetensors")
    b = load_file(build_demo_model(tmp_path / "b", seed=1) / "model.safetensors")
    c = load_file(build_demo_model(tmp_path / "c", seed=2) / "model.safetensors")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_ensure_reuses_a_built_model(demo_model_dir: Path) -> None:
    before = (demo_model_dir / "model.safetensors").stat().st_mtime_ns
    ensure_demo_model(demo_model_dir)
    assert (demo_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_cli_builds_into_the_given_dir(tmp_path: Path) -> None:
    out = tmp_path / "dm"
    res = subprocess.run(
        [sys.executable, "-m", "lmiflow.cli", "demo-model", str(out), "--seed", "3"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out)
    assert json.loads((out / "lmiflow-demo.json").read_text())["seed"] == 3
