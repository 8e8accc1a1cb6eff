"""The pipeline's pure steps on the worked example: plan -> serving.properties."""

from pathlib import Path

import pytest

from lmiflow import model_source, pipeline
from lmiflow.serving.properties import parse
from lmiflow.spec import load_spec

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "llama-2-13b-worked-example.yaml"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setattr(model_source, "_hub_resolvable", lambda: False)
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(tmp_path))  # no calibration records


def test_chosen_tensor_parallel_degree_is_rendered_into_serving_properties(offline):
    """26 GB of fp16 weights cannot sit on one 24 GB A10G: on ml.g5.12xlarge the model is
    sharded over 2 GPUs (the other 2 hold a second copy), and the container must be told 2."""
    spec = load_spec(CONFIG)
    target = pipeline.target_for(spec)
    model = pipeline.fetch_config(spec)
    p = pipeline.choose_instance(spec, model, target)
    assert (p.chosen.instance_type, p.chosen.tensor_parallel_degree) == ("ml.g5.12xlarge", 2)
    props = parse(pipeline.prepare_serving(spec, model, p, target).properties)
    assert props.tensor_parallel_degree == 2
    # each of the two copies takes 2 of the 4 concurrent requests of 3072 + 1024 tokens
    assert props.max_rolling_batch_size == 2 and props.max_model_len == 4096
    assert props.dtype == "fp16"
    forced = load_spec(CONFIG, {"instance": {"allow": ["ml.g5.12xlarge"],
                                             "tensor_parallel_degree": 4}})
    p4 = pipeline.choose_instance(forced, model, target)
    assert parse(pipeline.prepare_serving(forced, model, p4, target).properties
                 ).tensor_parallel_degree == 4
