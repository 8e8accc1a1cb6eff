"""The LMI image catalog: tags from the SageMaker SDK's data, facts per release."""

from __future__ import annotations

import re

import pytest

from lmiflow.serving import images
from lmiflow.serving.images import FACTS, image_from_tag, parse_tag, resolve


def test_parse_tag():
    assert parse_tag("0.33.0-lmi15.0.0-cu128") == {
        "djl": "0.33.0", "kind": "lmi", "release": "15.0.0", "cuda": "12.8"}
    assert parse_tag("0.33.0-tensorrtllm0.21.0-cu128")["kind"] == "tensorrtllm"
    assert parse_tag("0.36.0-lmi20.0.0-cu128-v1.0")["cuda"] == "12.8"  # patch suffix
    assert parse_tag("0.38.0-lmi29.0.0-cu130")["cuda"] == "13.0"
    for bad in ("latest", "0.33.0-cu128", "0.33-lmi15.0.0-cu128", "0.33.0-lmi15.0.0"):
        with pytest.raises(ValueError, match="not an LMI tag"):
            parse_tag(bad)


def test_catalog_holds_the_releases_the_lmi_release_notes_name():
    # serving/docs/lmi/release_notes.md (djl-serving): LMI V15 is 0.33.0-lmi15.0.0-cu128 and its
    # TensorRT-LLM image 0.33.0-tensorrtllm0.21.0-cu128.
    vllm = {i.djl_version: i for i in images.catalog("vllm")}
    trt = {i.djl_version: i for i in images.catalog("trtllm")}
    assert vllm["0.33.0"].tag == "0.33.0-lmi15.0.0-cu128"
    assert vllm["0.33.0"].cuda == "12.8" and vllm["0.33.0"].release == "lmi15.0.0"
    assert trt["0.33.0"].tag == "0.33.0-tensorrtllm0.21.0-cu128"
    assert all(i.framework == "djl-lmi" for i in vllm.values())
    assert all(i.framework == "djl-tensorrtllm" for i in trt.values())
    assert "djl-lmi.json" in vllm["0.33.0"].source


def test_default_is_the_sdks_latest_and_matches_its_uri():
    from sagemaker.core import image_uris

    for backend, framework in (("vllm", "djl-lmi"), ("trtllm", "djl-tensorrtllm")):
        uri = image_uris.retrieve(framework=framework, region="us-east-1", version=None)
        assert resolve(backend).tag == uri.rpartition(":")[2]


@pytest.mark.parametrize(
    ("tag", "async_vllm", "engine_args", "lmi_dist"),
    [
        ("0.28.0-lmi10.0.0-cu124", False, False, True),
        ("0.31.0-lmi13.0.0-cu124", False, False, True),
        ("0.32.0-lmi14.0.0-cu126", False, True, True),
        ("0.33.0-lmi15.0.0-cu128", True, True, False),
        ("0.38.0-lmi29.0.0-cu130", True, True, False),
    ],
)
def test_vllm_facts_by_release(tag, async_vllm, engine_args, lmi_dist):
    img = image_from_tag(tag, "test")
    assert img.has("vllm_async_service") is async_vllm
    assert img.has("vllm_engine_args") is engine_args
    assert img.has("lmi_dist") is lmi_dist
    assert not img.has("trtllm_llm_api")  # a vLLM image never has TensorRT-LLM facts


@pytest.mark.parametrize(
    ("tag", "facts_held"),
    [
        ("0.26.0-tensorrtllm0.7.1-cu122", {"trtllm_engine_mpi", "trtllm_toolkit",
                                           "trtllm_kv_cache_reuse", "trtllm_quantize_fp8"}),
        ("0.29.0-tensorrtllm0.11.0-cu124", {"trtllm_engine_mpi", "trtllm_toolkit",
                                            "trtllm_kv_cache_reuse", "trtllm_quantize_fp8",
                                            "trtllm_max_num_tokens"}),
        ("0.30.0-tensorrtllm0.12.0-cu125", {"trtllm_engine_mpi", "trtllm_toolkit",
                                            "trtllm_kv_cache_reuse", "trtllm_quantize_fp8",
                                            "trtllm_max_num_tokens",
                                            "trtllm_output_len_is_seq_len"}),
        ("0.32.0-tensorrtllm0.12.0-cu125", {"trtllm_engine_python_mpi_mode", "trtllm_toolkit",
                                            "trtllm_kv_cache_reuse", "trtllm_quantize_fp8",
                                            "trtllm_max_num_tokens",
                                            "trtllm_output_len_is_seq_len"}),
        ("0.33.0-tensorrtllm0.21.0-cu128", {"trtllm_llm_api", "trtllm_max_num_tokens",
                                            "trtllm_dtype_words"}),
    ],
)
def test_trtllm_facts_by_release(tag, facts_held):
    img = image_from_tag(tag, "test")
    assert {f.name for f in img.facts()} == facts_held


def test_every_fact_names_its_source_file():
    for f in FACTS:
        assert f.source.startswith("deepjavalibrary/djl-serving ")
        assert re.search(r"\w+\.(md|py|java|Dockerfile)\b", f.source), f.name


def test_unknown_fact_is_an_error():
    with pytest.raises(KeyError):
        image_from_tag("0.33.0-lmi15.0.0-cu128", "t").has("vllm_async")


def test_resolve_by_version_and_by_uri():
    assert resolve("vllm", "0.31.0").tag == "0.31.0-lmi13.0.0-cu124"
    uri = "123456789012.dkr.ecr.us-east-1.amazonaws.com/my-lmi:0.32.0-lmi14.0.0-cu126"
    assert resolve("vllm", None, uri).djl_version == "0.32.0"
    with pytest.raises(ValueError, match=r"serving\.image_version: 0\.99\.0 is not"):
        resolve("vllm", "0.99.0")
    with pytest.raises(ValueError, match=r"serving\.image_version: 0\.27\.0"):
        resolve("vllm", "0.27.0")  # TensorRT-LLM only
    with pytest.raises(ValueError, match=r"serving\.image_uri: .* is a trtllm image"):
        resolve("vllm", None, "x.dkr.ecr.us-east-1.amazonaws.com/d:0.33.0-tensorrtllm0.21.0-cu128")
    with pytest.raises(ValueError, match=r"serving\.image_uri: tag 'mine'"):
        resolve("vllm", None, "123456789012.dkr.ecr.us-east-1.amazonaws.com/lmi:mine")
    # a custom tag with the DJL version given: the catalog's facts for that version
    assert resolve("vllm", "0.33.0", "1.dkr.ecr.us-east-1.amazonaws.com/lmi:mine").cuda == "12.8"


def test_release_table_pairs_vllm_and_trtllm_images():
    rows = {r["djl_version"]: r for r in images.release_table()}
    r = rows["0.33.0"]
    assert r["lmi_tag"] == "0.33.0-lmi15.0.0-cu128"
    assert r["trtllm_tag"] == "0.33.0-tensorrtllm0.21.0-cu128"
    assert r["vllm_async"] is True and r["engines"] == ["vllm-async", "trtllm-llmapi"]
    assert rows["0.30.0"]["trtllm_engine"] == "MPI"
    assert rows["0.32.0"]["trtllm_engine"] == "Python + option.mpi_mode=true"
    assert rows["0.32.0"]["engines"] == ["vllm", "lmi-dist", "trtllm"]
    assert rows["0.27.0"]["lmi_tag"] is None  # the SDK lists no djl-lmi image for 0.27.0
