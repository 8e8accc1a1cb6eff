"""Which SageMaker inference AMI (ProductionVariant.InferenceAmiVersion) an LMI image needs.

Why: the AMI fixes the host's NVIDIA driver, and the driver bounds the CUDA the container can
run. Without an override a variant gets its instance family's default driver (the SageMaker
guide's "GPU drivers" page, inference-gpu-drivers.html, lists some families still on 470 /
CUDA 11.4), so a `-cu130` image would fail to start. LMI images do ship NVIDIA's forward-
compatibility libraries (serving/docker/dockerd-entrypoint-with-cuda-compat.sh in
deepjavalibrary/djl-serving), but forward compatibility holds only for some driver branches;
a driver whose own CUDA is at least the image's needs no such luck.

Rule: the AMI whose CUDA is the lowest that is still >= the image's CUDA (the smallest step from
what the image was built for); among AMIs with the same driver, the `-1` revision (NVIDIA
Container Toolkit with CUDA-compat mounting disabled, so the image's own entrypoint decides).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

SOURCE = ("botocore sagemaker service model: ProductionVariant.InferenceAmiVersion documentation "
          "(enum ProductionVariantInferenceAmiVersion); SageMaker Developer Guide, "
          "inference-gpu-drivers.html")


class InferenceAmi(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    nvidia_driver: int
    cuda: tuple[int, int]
    compat_mounting_disabled: bool


# GPU AMIs only (al2-ami-sagemaker-inference-neuron-2 is for Inferentia/Trainium).
AMIS: tuple[InferenceAmi, ...] = (
    InferenceAmi(name="al2-ami-sagemaker-inference-gpu-2", nvidia_driver=535, cuda=(12, 2),
                 compat_mounting_disabled=False),
    InferenceAmi(name="al2-ami-sagemaker-inference-gpu-2-1", nvidia_driver=535, cuda=(12, 2),
                 compat_mounting_disabled=True),
    InferenceAmi(name="al2-ami-sagemaker-inference-gpu-3-1", nvidia_driver=550, cuda=(12, 4),
                 compat_mounting_disabled=True),
    InferenceAmi(name="al2023-ami-sagemaker-inference-gpu-4-1", nvidia_driver=580,
                 cuda=(13, 0), compat_mounting_disabled=True),
)


def ami_for_cuda(cuda: tuple[int, int]) -> InferenceAmi:
    """The AMI for an image built for `cuda`; ValueError when no AMI's driver is new enough."""
    fitting = [a for a in AMIS if a.cuda >= cuda]
    if not fitting:
        newest = max(AMIS, key=lambda a: a.cuda)
        raise ValueError(f"no inference AMI supports CUDA {cuda[0]}.{cuda[1]} (newest: "
                         f"{newest.name}, CUDA {newest.cuda[0]}.{newest.cuda[1]}); pin "
                         "instance.inference_ami_version or choose an older image")
    return min(fitting, key=lambda a: (a.cuda, not a.compat_mounting_disabled))


def by_name(name: str) -> InferenceAmi | None:
    return next((a for a in AMIS if a.name == name), None)
