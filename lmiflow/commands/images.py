"""`lmiflow images [--json]`: the LMI images the installed SageMaker SDK knows, what each one's
serving.properties may say, and the host AMI its CUDA gets (lmiflow.serving.images)."""

from __future__ import annotations

import json
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "images", help="LMI image catalog: tags, CUDA, engines, AMI, with sources.",
        description=__doc__)
    p.add_argument("--json", action="store_true",
                   help="Every image with the facts that hold for it and their sources.")
    p.set_defaults(run=run)


def _ami(cuda: str | None) -> str:
    from lmiflow.targets.inference_ami import ami_for_cuda

    if cuda is None:
        return "-"
    major, minor = cuda.split(".")
    try:
        return ami_for_cuda((int(major), int(minor))).name.rpartition("inference-")[2]
    except ValueError:
        return "none"


def ami_name(img: Any) -> str | None:
    from lmiflow.targets.inference_ami import ami_for_cuda

    try:
        return ami_for_cuda(img.cuda_version).name
    except ValueError:
        return None


def run(args: Any) -> int:
    from lmiflow.serving.images import catalog, release_table
    from lmiflow.targets.inference_ami import SOURCE

    if args.json:
        out = {"images": [], "ami_source": SOURCE}
        for backend in ("vllm", "trtllm"):
            for img in catalog(backend):
                out["images"].append({**img.model_dump(), "inference_ami": ami_name(img),
                                      "facts": [f.model_dump() for f in img.facts()]})
        print(json.dumps(out, indent=2))
        return 0
    rows = [("DJL", "vLLM image", "mode", "AMI", "TensorRT-LLM", "engine", "AMI")]
    for r in release_table():
        lmi = f"{r['lmi_tag'].split('-')[1]} cu{r['lmi_cuda']}" if r["lmi_tag"] else "-"
        mode = "-" if r["vllm_async"] is None else ("async" if r["vllm_async"] else "rolling")
        trt = (f"{r['trtllm_tag'].split('-')[1].removeprefix('tensorrtllm')} "
               f"cu{r['trtllm_cuda']}" if r["trtllm_tag"] else "-")
        engine = {"Python + option.mpi_mode=true": "Python+mpi", "Python (async)": "async",
                  None: "-"}.get(r["trtllm_engine"], r["trtllm_engine"])
        rows.append((r["djl_version"], lmi, mode, _ami(r["lmi_cuda"]), trt, engine,
                     _ami(r["trtllm_cuda"])))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print("\nTags: sagemaker-core's image_uri_config (djl-lmi.json, djl-tensorrtllm.json).\n"
          "What each release accepts: deepjavalibrary/djl-serving, per release branch\n"
          "(--json names each fact's file). AMI: al2*-ami-sagemaker-inference-<shown>, the\n"
          "lowest whose NVIDIA driver serves the image's CUDA (botocore's service model).")
    return 0
