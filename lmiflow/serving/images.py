"""The LMI image catalog: for each DJL Serving release, its image tags (vLLM and TensorRT-LLM),
their CUDA version, and what each image's `serving.properties` may say.

Why a catalog: what the container accepts changes between LMI releases (the vLLM async service
appears in 0.33.0, TensorRT-LLM moves from `engine=MPI` to `engine=Python` +
`option.mpi_mode=true` in 0.31.0 and to TensorRT-LLM's LLM API in 0.33.0, ...). Rendering
one set of keys for every image gives files that an older or newer container misreads, and
that only shows up as a failed endpoint twenty minutes later.

Two sources, kept apart:
- the tags (DJL version <-> LMI release <-> CUDA) come from the SageMaker SDK's image-URI data
  (`sagemaker-core`: `sagemaker/core/image_uri_config/djl-lmi.json` and
  `djl-tensorrtllm.json`), read as data so planning does not import the SDK;
- the behaviour of each release is a table of facts below (`FACTS`), each with the
  deepjavalibrary/djl-serving file (on that release's `<version>-dlc` branch) it was read from.
"""

from __future__ import annotations

import functools
import json
import re
from importlib.metadata import PackageNotFoundError, distribution
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Backend = Literal["vllm", "trtllm"]
FRAMEWORK: dict[str, str] = {"vllm": "djl-lmi", "trtllm": "djl-tensorrtllm"}
SDK_DIST = "sagemaker-core"
SDK_DATA = "sagemaker/core/image_uri_config/{framework}.json"

# <djl>-lmi<release>-cu<NNN>[-suffix] and <djl>-tensorrtllm<version>-cu<NNN>[-suffix]
TAG_RE = re.compile(
    r"(?P<djl>\d+\.\d+\.\d+)-(?P<kind>lmi|tensorrtllm)(?P<release>\d+\.\d+\.\d+(?:rc\d+)?)"
    r"-cu(?P<cuda>\d{3})(?:-[^\s]*)?"
)
_VERSION_RE = re.compile(r"\d+\.\d+\.\d+")  # matched in full, like lmiflow.patterns


def version_key(v: str) -> tuple[int, ...]:
    """'0.33.0' -> (0, 33, 0), for comparing DJL versions."""
    if not _VERSION_RE.fullmatch(v):
        raise ValueError(f"{v!r} is not a DJL version such as 0.33.0")
    return tuple(int(p) for p in v.split("."))


class Fact(BaseModel):
    """One thing an LMI image accepts, for the DJL versions [since, until)."""

    model_config = ConfigDict(frozen=True)

    name: str
    backend: Backend
    since: str
    until: str | None = None
    what: str
    source: str

    def holds(self, djl_version: str) -> bool:
        v = version_key(djl_version)
        return version_key(self.since) <= v and (
            self.until is None or v < version_key(self.until))


_DS = "deepjavalibrary/djl-serving"
FACTS: tuple[Fact, ...] = (
    Fact(name="vllm_async_service", backend="vllm", since="0.33.0",
         what="option.entryPoint=djl_python.lmi_vllm.vllm_async_service with "
              "option.async_mode=true and option.rolling_batch=disable",
         source=f"{_DS} 0.33.0-dlc: engines/python/setup/djl_python/lmi_vllm/"
                "vllm_async_service.py (absent on 0.32.0-dlc); serving/docs/lmi/user_guides/"
                "vllm_user_guide.md 'Async Mode Configurations'; release_notes.md LMI V15"),
    Fact(name="vllm_engine_args", backend="vllm", since="0.32.0",
         what="any vLLM engine argument as option.<arg> (option.kv_cache_dtype among them)",
         source=f"{_DS} 0.32.0-dlc: engines/python/setup/djl_python/properties_manager/"
                "vllm_rb_properties.py (extra='allow', get_additional_vllm_engine_args); on "
                "0.31.0-dlc rolling_batch/rolling_batch_vllm_utils.py builds EngineArgs from "
                "fixed fields, without kv_cache_dtype"),
    Fact(name="vllm_chunked_prefill_option", backend="vllm", since="0.29.0",
         what="option.enable_chunked_prefill",
         source=f"{_DS} 0.29.0-dlc: properties_manager/vllm_rb_properties.py "
                "(enable_chunked_prefill; absent on 0.28.0-dlc)"),
    Fact(name="vllm_v1_engine", backend="vllm", since="0.33.0",
         what="vLLM >= 0.8 (V1 engine: chunked prefill always on, so the prefill budget "
              "may be below max_model_len)",
         source=f"{_DS} 0.33.0-dlc: serving/docker/lmi.Dockerfile (vllm==0.8.4); 0.32.0-dlc "
                "ships vllm 0.6.3.post1"),
    Fact(name="lmi_dist", backend="vllm", since="0.25.0", until="0.33.0",
         what="option.rolling_batch=lmi-dist and scheduler",
         source=f"{_DS} serving/docs/lmi/announcements/breaking_changes.md 'LMI Container "
                "v15 (0.33.0)': removal of sequence scheduler and lmi-dist"),
    Fact(name="trtllm_engine_mpi", backend="trtllm", since="0.25.0", until="0.31.0",
         what="engine=MPI with option.rolling_batch=trtllm",
         source=f"{_DS} 0.27.0-dlc..0.30.0-dlc: serving/docs/lmi/user_guides/"
                "trt_llm_user_guide.md 'Quick Start Configurations'"),
    Fact(name="trtllm_engine_python_mpi_mode", backend="trtllm", since="0.31.0",
         until="0.33.0",
         what="engine=Python with option.mpi_mode=true and option.rolling_batch=trtllm",
         source=f"{_DS} 0.31.0-dlc, 0.32.0-dlc: serving/docs/lmi/user_guides/"
                "trt_llm_user_guide.md 'Quick Start Configurations'; conceptual_guide/"
                "lmi_engine.md 'MPI Engine operating in LMI'"),
    Fact(name="trtllm_toolkit", backend="trtllm", since="0.25.0", until="0.33.0",
         what="rolling_batch=trtllm keys: option.max_input_len (default 1024), "
              "option.max_output_len, option.kv_cache_free_gpu_mem_fraction (default 0.95)",
         source=f"{_DS} 0.30.0-dlc: serving/docs/lmi/user_guides/trt_llm_user_guide.md "
                "'Advanced TensorRT-LLM Configurations'"),
    Fact(name="trtllm_quantize_fp8", backend="trtllm", since="0.26.0", until="0.33.0",
         what="option.quantize=fp8 (runtime FP8 weights)",
         source=f"{_DS} trt_llm_user_guide.md 'Advanced parameters: FP8': option.quantize "
                "'>= 0.26.0'"),
    Fact(name="trtllm_max_num_tokens", backend="trtllm", since="0.27.0",
         what="option.max_num_tokens",
         source=f"{_DS} trt_llm_user_guide.md: option.max_num_tokens '>= 0.27.0'"),
    Fact(name="trtllm_kv_cache_reuse", backend="trtllm", since="0.26.0", until="0.33.0",
         what="option.enable_kv_cache_reuse",
         source=f"{_DS} trt_llm_user_guide.md: option.enable_kv_cache_reuse '>= 0.26.0'"),
    Fact(name="trtllm_output_len_is_seq_len", backend="trtllm", since="0.30.0", until="0.33.0",
         what="option.max_output_len means max_seq_len (input + output)",
         source=f"{_DS} 0.30.0-dlc: trt_llm_user_guide.md option.max_output_len 'Now maps to "
                "max_seq_len in TRTLLM!' (0.29.0-dlc: output tokens only)"),
    Fact(name="trtllm_llm_api", backend="trtllm", since="0.33.0",
         what="engine=Python, option.entryPoint=djl_python.lmi_trtllm.trtllm_async_service "
              "with option.async_mode=true and option.rolling_batch=disable (no mpi_mode: "
              "TensorRT-LLM's LLM API starts its own workers); option.max_input_len, "
              "option.max_seq_len, option.max_num_tokens, option.free_gpu_memory_fraction, "
              "option.enable_block_reuse, option.quant_algo, option.kv_cache_quant_algo",
         source=f"{_DS} 0.33.0-dlc: engines/python/src/main/java/ai/djl/python/engine/"
                "PyModel.java (SERVING_FEATURES=trtllm -> trtllm_async_service); engines/"
                "python/setup/djl_python/properties_manager/trt_properties.py "
                "(get_kv_cache_config, get_llm_kwargs); serving/docker/partition/"
                "trt_llm_partition.py (parse_quant_config, parse_build_config); tests/"
                "integration/llm/prepare.py (build_trtllm_handler_model)"),
    Fact(name="trtllm_dtype_words", backend="trtllm", since="0.33.0",
         what="option.dtype in TensorRT-LLM's words (bfloat16, float16, float32, auto): "
              "passed unchanged to TensorRT-LLM's LLM(dtype=...), which has no fp16/bf16 "
              "aliases (the vLLM path maps them; this one does not)",
         source=f"{_DS} 0.33.0-dlc: engines/python/setup/djl_python/properties_manager/"
                "trt_properties.py line 39 (dtype: str = 'auto') and line 134 (\"dtype\": "
                "self.dtype in get_llm_kwargs, unmapped), lmi_trtllm/trtllm_async_service.py "
                "lines 97-100 (LLM(model, **get_llm_kwargs())); serving/docker/partition/"
                "trt_llm_partition.py lines 248-249 (the start-up engine build passes dtype "
                "unchanged too); serving/docker/tensorrt-llm.Dockerfile line 16 "
                "(trtllm_version=0.21.0rc1). NVIDIA/TensorRT-LLM: tensorrt_llm/llmapi/"
                "llm_args.py (dtype 'auto' by default, validate_dtype compares with "
                "'bfloat16'), tensorrt_llm/_utils.py _str_to_torch_dtype_dict (bfloat16, "
                "float16, float32, ...; str_dtype_to_torch asserts 'Unsupported dtype')"),
)
_FACT_NAMES = frozenset(f.name for f in FACTS)


class LmiImage(BaseModel):
    """One LMI image: its tag and what its serving.properties may say."""

    model_config = ConfigDict(frozen=True)

    backend: Backend
    framework: str = Field(description="SageMaker SDK framework key (djl-lmi, djl-tensorrtllm).")
    djl_version: str = Field(description="DJL Serving version, the SDK's version key.")
    tag: str
    release: str = Field(description="LMI release (lmi15.0.0) or TensorRT-LLM (0.21.0).")
    cuda: str = Field(description="CUDA the image is built for, e.g. 12.8.")
    source: str = Field(description="Where the tag came from.")

    def has(self, fact: str) -> bool:
        if fact not in _FACT_NAMES:
            raise KeyError(fact)
        return any(f.name == fact and f.backend == self.backend and f.holds(self.djl_version)
                   for f in FACTS)

    def facts(self) -> list[Fact]:
        """The facts that hold for this image (what the catalog listing shows, with sources)."""
        return [f for f in FACTS if f.backend == self.backend and f.holds(self.djl_version)]

    @property
    def cuda_version(self) -> tuple[int, int]:
        major, minor = self.cuda.split(".")
        return int(major), int(minor)


def parse_tag(tag: str) -> dict[str, str]:
    """djl, kind (lmi | tensorrtllm), release and CUDA (as 12.8) of an LMI tag."""
    m = TAG_RE.fullmatch(tag)
    if not m:
        raise ValueError(f"tag {tag!r} is not an LMI tag such as 0.33.0-lmi15.0.0-cu128")
    cuda = m.group("cuda")
    return {"djl": m.group("djl"), "kind": m.group("kind"), "release": m.group("release"),
            "cuda": f"{cuda[:-1]}.{cuda[-1]}"}


def image_from_tag(tag: str, source: str) -> LmiImage:
    t = parse_tag(tag)
    backend: Backend = "vllm" if t["kind"] == "lmi" else "trtllm"
    release = ("lmi" + t["release"]) if backend == "vllm" else t["release"]
    return LmiImage(backend=backend, framework=FRAMEWORK[backend], djl_version=t["djl"],
                    tag=tag, release=release, cuda=t["cuda"], source=source)


def images_from_sdk_data(framework: str, data: dict) -> list[LmiImage]:
    """The images one SDK file lists, newest first. `data` is the file's JSON."""
    path = SDK_DATA.format(framework=framework)
    out = [image_from_tag(entry["tag_prefix"], f"{SDK_DIST}: {path} versions[{version!r}]")
           for version, entry in data["versions"].items()]
    for img in out:
        if img.framework != framework:
            raise ValueError(f"{path}: tag {img.tag} is not a {framework} tag")
    return sorted(out, key=lambda i: version_key(i.djl_version), reverse=True)


@functools.lru_cache(maxsize=4)
def _sdk_data(framework: str) -> dict:
    """The SDK's JSON for one framework, read from the installed distribution's files (so
    planning does not pay the seconds `import sagemaker.core` takes)."""
    try:
        path = distribution(SDK_DIST).locate_file(SDK_DATA.format(framework=framework))
    except PackageNotFoundError:
        raise ValueError(f"the SageMaker SDK ({SDK_DIST}) is not installed") from None
    return json.loads(path.read_text(encoding="utf-8"))


def catalog(backend: Backend) -> list[LmiImage]:
    """Every image the installed SageMaker SDK knows for a backend, newest first."""
    return images_from_sdk_data(FRAMEWORK[backend], _sdk_data(FRAMEWORK[backend]))


def latest_version(backend: Backend) -> str:
    """The SDK's `latest` alias for the backend's framework."""
    return _sdk_data(FRAMEWORK[backend])["version_aliases"]["latest"]


def resolve(backend: Backend, image_version: str | None = None,
            image_uri: str | None = None) -> LmiImage:
    """The image a config selects: `image_uri`'s tag when it is an LMI tag, else the
    catalog's entry for `image_version` (the SDK's latest when None). ValueError names the
    config field at fault."""
    if image_uri:
        tag = image_uri.rpartition(":")[2] if ":" in image_uri.rpartition("/")[2] else ""
        if TAG_RE.fullmatch(tag):
            img = image_from_tag(tag, "serving.image_uri")
            if img.backend != backend:
                raise ValueError(f"serving.image_uri: {tag} is a {img.backend} image, "
                                 f"serving.backend is {backend}")
            return img
        if not image_version:
            raise ValueError(f"serving.image_uri: tag {tag or '(none)'!r} is not an LMI tag "
                             "(<djl>-lmi<N>-cu<NNN>): set serving.image_version to the DJL "
                             "version it is built from")
    version = image_version or latest_version(backend)
    images = catalog(backend)
    for img in images:
        if img.djl_version == version:
            return img
    known = ", ".join(i.djl_version for i in images)
    raise ValueError(f"serving.image_version: {version} is not a {FRAMEWORK[backend]} "
                     f"version the SageMaker SDK knows ({known})")


def release_table() -> list[dict[str, object]]:
    """One row per DJL version: LMI tag, TensorRT-LLM tag, CUDA, engines, async vLLM."""
    by_version: dict[str, dict[str, LmiImage]] = {}
    for backend in ("vllm", "trtllm"):
        for img in catalog(backend):  # type: ignore[arg-type]
            by_version.setdefault(img.djl_version, {})[backend] = img
    rows = []
    for version in sorted(by_version, key=version_key, reverse=True):
        imgs = by_version[version]
        lmi, trt = imgs.get("vllm"), imgs.get("trtllm")
        engines = []
        if lmi is not None:
            engines.append("vllm-async" if lmi.has("vllm_async_service") else "vllm")
            if lmi.has("lmi_dist"):
                engines.append("lmi-dist")
        if trt is not None:
            engines.append("trtllm-llmapi" if trt.has("trtllm_llm_api") else "trtllm")
        rows.append({
            "djl_version": version,
            "lmi_tag": lmi.tag if lmi else None,
            "lmi_cuda": lmi.cuda if lmi else None,
            "vllm_async": lmi.has("vllm_async_service") if lmi else None,
            "trtllm_tag": trt.tag if trt else None,
            "trtllm_cuda": trt.cuda if trt else None,
            "trtllm_engine": (None if trt is None else "MPI" if trt.has("trtllm_engine_mpi")
                              else "Python + option.mpi_mode=true"
                              if trt.has("trtllm_engine_python_mpi_mode") else "Python (async)"),
            "engines": engines,
        })
    return rows
