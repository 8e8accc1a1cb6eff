"""`lmiflow images`: the catalog a user reads before pinning serving.image_version."""

from __future__ import annotations

import json

from lmiflow.cli import main


def test_table_fits_80_columns_and_shows_each_release(capsys):
    assert main(["images"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line[:1] == "0"}
    # 0.33.0: async vLLM (LMI v15, CUDA 12.8) and the TensorRT-LLM 0.21 image, both on the
    # CUDA 13.0 driver AMI (no CUDA 12.8 AMI exists; 12.4's driver is too old)
    assert rows["0.33.0"] == ["0.33.0", "lmi15.0.0", "cu12.8", "async", "gpu-4-1", "0.21.0",
                              "cu12.8", "async", "gpu-4-1"]
    assert rows["0.31.0"][3:5] == ["rolling", "gpu-3-1"]
    assert rows["0.30.0"][7] == "MPI"


def test_json_lists_facts_with_sources(capsys):
    assert main(["images", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_tag = {i["tag"]: i for i in data["images"]}
    img = by_tag["0.32.0-tensorrtllm0.12.0-cu125"]
    assert img["inference_ami"] == "al2023-ami-sagemaker-inference-gpu-4-1"
    facts = {f["name"]: f for f in img["facts"]}
    assert "trtllm_engine_python_mpi_mode" in facts
    assert "trt_llm_user_guide.md" in facts["trtllm_engine_python_mpi_mode"]["source"]
    assert "botocore" in data["ami_source"]
