"""InferenceAmiVersion follows the image's CUDA; the table agrees with botocore's own data."""

from __future__ import annotations

import re

import botocore.session
import pytest

from lmiflow.serving import images
from lmiflow.targets.inference_ami import AMIS, ami_for_cuda, by_name

_SM = botocore.session.get_session().get_service_model("sagemaker")


def _botocore_ami_docs() -> dict[str, dict[str, str]]:
    """name -> {driver, cuda} as the service model's documentation lists them (HTML <dt>/<dd>)."""
    doc = _SM.shape_for("ProductionVariant").members["InferenceAmiVersion"].documentation
    out = {}
    for name, body in re.findall(r"<dt>([^<]+)</dt>\s*<dd>(.*?)</dd>", doc, re.S):
        text = re.sub(r"<[^>]+>", " ", body)
        driver = re.search(r"NVIDIA driver version:\s*(\d+)", text)
        cuda = re.search(r"CUDA version:\s*([\d.]+)", text)
        if driver and cuda:
            out[name.strip()] = {"driver": driver.group(1), "cuda": cuda.group(1)}
    return out


def test_table_matches_botocore_documentation_and_enum():
    docs = _botocore_ami_docs()
    enum = set(_SM.shape_for("ProductionVariantInferenceAmiVersion").enum)
    assert {a.name for a in AMIS} == set(docs)  # every GPU AMI botocore documents, no more
    for a in AMIS:
        assert a.name in enum
        assert str(a.nvidia_driver) == docs[a.name]["driver"]
        assert f"{a.cuda[0]}.{a.cuda[1]}" == docs[a.name]["cuda"]


@pytest.mark.parametrize(
    ("cuda", "want"),
    [
        ((12, 2), "al2-ami-sagemaker-inference-gpu-2-1"),  # -1: compat mounting disabled
        ((12, 4), "al2-ami-sagemaker-inference-gpu-3-1"),
        ((12, 5), "al2023-ami-sagemaker-inference-gpu-4-1"),
        ((12, 8), "al2023-ami-sagemaker-inference-gpu-4-1"),
        ((13, 0), "al2023-ami-sagemaker-inference-gpu-4-1"),
    ],
)
def test_lowest_ami_whose_cuda_covers_the_image(cuda, want):
    assert ami_for_cuda(cuda).name == want


def test_newer_cuda_than_any_ami_is_an_error():
    with pytest.raises(ValueError, match=r"CUDA 13\.1.*instance\.inference_ami_version"):
        ami_for_cuda((13, 1))


def test_every_catalog_image_gets_an_ami_that_covers_its_cuda():
    for backend in ("vllm", "trtllm"):
        for img in images.catalog(backend):
            ami = ami_for_cuda(img.cuda_version)
            assert ami.cuda >= img.cuda_version, img.tag
    assert ami_for_cuda(images.resolve("vllm", "0.38.0").cuda_version).nvidia_driver >= 580
    assert by_name("al2-ami-sagemaker-inference-neuron-2") is None  # not a GPU AMI
