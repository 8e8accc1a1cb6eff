"""Where config.json comes from: local, the Hub (through huggingface_hub), or a snapshot."""

import json
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest

from lmiflow import model_source
from lmiflow.errors import UserInputError
from lmiflow.model_source import resolve_model

MODELS = Path(__file__).resolve().parents[2] / "configs" / "models"


def test_local_directory():
    r = resolve_model(str(MODELS / "mistral-7b"))
    assert r.source.startswith("local:") and r.spec.model_type == "mistral"


def test_hub_id_uses_huggingface_hub_and_exact_safetensors_counts(monkeypatch, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text((MODELS / "llama-3.1-8b" / "config.json").read_text())
    calls = []
    monkeypatch.setattr(model_source, "_hub_resolvable", lambda: True)

    def fake_download(repo_id, filename, revision=None, token=None, endpoint=None):
        calls.append((repo_id, filename, revision, token))
        return str(cfg)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "get_safetensors_metadata",
                        lambda self, repo, revision=None, token=None: SimpleNamespace(
                            parameter_count={"BF16": 8_030_261_249}))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    r = resolve_model("meta-llama/Llama-3.1-8B", revision="abc123")
    assert calls == [("meta-llama/Llama-3.1-8B", "config.json", "abc123", "hf_" + "x" * 34)]
    assert r.spec.parameters == 8_030_261_249 and r.spec.parameter_source == "safetensors"
    assert r.source == "hub:meta-llama/Llama-3.1-8B@abc123"


def test_hub_unreachable_falls_back_to_bundled_snapshot(monkeypatch):
    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    r = resolve_model("meta-llama/Llama-2-13b-hf")
    assert r.source.startswith("snapshot:") and "Hub unreachable" in r.note
    assert r.spec.parameters == json.loads(
        (MODELS / "llama-2-13b" / "source.json").read_text())["published_parameters"]


def test_hub_unreachable_without_snapshot_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(UserInputError) as e:
        resolve_model("someone/unknown-model")
    assert e.value.field == "model" and "no bundled snapshot" in e.value.reason


def test_snapshot_by_name_and_bad_ids():
    assert resolve_model("mixtral-8x7b").spec.num_experts == 8
    for bad in ("./missing", "a\nb", ""):
        with pytest.raises(UserInputError):
            resolve_model(bad)


def test_hub_config_that_disagrees_with_its_safetensors_is_input_error(monkeypatch, tmp_path):
    """The Hub's safetensors metadata carries each tensor's shape: a config.json whose
    hidden_size they contradict stops the plan, naming the file on the Hub and both values."""
    cfg = json.loads((MODELS / "llama-3.1-8b" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_size": 8192}))
    monkeypatch.setattr(model_source, "_hub_resolvable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: str(tmp_path / "config.json"))
    shard = SimpleNamespace(tensors={
        "model.embed_tokens.weight": SimpleNamespace(shape=[128256, 4096])})
    monkeypatch.setattr(huggingface_hub.HfApi, "get_safetensors_metadata",
                        lambda self, repo, revision=None, token=None: SimpleNamespace(
                            parameter_count={"BF16": 8_030_261_248},
                            files_metadata={"model-00001-of-00004.safetensors": shard}))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UserInputError) as err:
        resolve_model("meta-llama/Llama-3.1-8B")
    assert (err.value.field, err.value.reason) == (
        "model (hf://meta-llama/Llama-3.1-8B/config.json:hidden_size)",
        "8192, but the weights hold 4096 (model.embed_tokens.weight is 128256 x 4096)")


def test_bad_values_name_the_local_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    cfg = json.loads((MODELS / "mistral-7b" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "sliding_window": 1e400}))
    with pytest.raises(UserInputError) as err:
        resolve_model("m")
    assert (err.value.field, err.value.reason) == (
        "model (m/config.json:sliding_window)", "must be a whole number >= 0, got inf")
