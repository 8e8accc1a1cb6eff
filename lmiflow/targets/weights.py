"""Where a model's weights are, who may read them, and how the serving container gets them.

Sources: a Hugging Face Hub repository (public, gated or private), an `s3://` prefix that
already holds the model, or a local directory. Deliveries:

- `hub`: the container downloads the repository itself at start-up (public models; a gated or
  private one only when the user opts in to handing the runner's token to the container).
- `staged`: lmiflow copies the files into the target's S3 prefix from the machine that runs
  the flow, with the runner's token, so no token reaches SageMaker; SageMaker then copies the
  prefix to /opt/ml/model before the container starts (also the faster start for big models).
- `s3`: the user's own prefix is what SageMaker copies to /opt/ml/model.
- `local`: the local target's server reads the model on this machine.

Access is checked here, at plan time, the way the download itself will ask (a HEAD of
config.json with the same token), so a gated repository without an accepted licence stops the
run before anything is created.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from lmiflow.errors import UserInputError
from lmiflow.targets.aws_requests import AwsRequest, split_s3

# What a serving container needs from a model repository: configs, tokenizer files, weights
# (safetensors, else PyTorch .bin), chat templates, and the repository's code only when it is
# trusted. Sub-folders (Llama's original/, quantised variants) are not part of the model.
MODEL_FILE_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja")
BIN_WEIGHT_PATTERNS = ("pytorch_model*.bin",)
CODE_PATTERNS = ("*.py",)

Delivery = Literal["hub", "staged", "s3", "local"]
Access = Literal["public", "gated", "private", "unknown", "n/a"]


class WeightFile(BaseModel):
    """One file of the model: what its bytes must be. sha256 for Hub LFS files and local files
    (local: computed when staging), git_sha1 (the git blob id) for small Hub files."""

    name: str
    size: int = Field(ge=0)
    sha256: str | None = None
    git_sha1: str | None = None


class ModelSource(BaseModel):
    kind: Literal["hub", "s3", "local"]
    id: str = Field(description="Hub id, s3:// prefix or directory")
    revision: str | None = Field(default=None, description="as configured")
    commit: str | None = Field(default=None, description="the Hub commit the revision names")
    access: Access = "n/a"
    files: list[WeightFile] = Field(default_factory=list)
    note: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class WeightsPlan(BaseModel):
    """How this deployment's container gets the weights, decided before anything is created."""

    source: ModelSource
    delivery: Delivery
    prefix: str | None = Field(
        default=None, description="the s3:// prefix SageMaker copies to /opt/ml/model")
    token_to_container: bool = False
    network_isolation: bool = False
    warnings: list[str] = Field(default_factory=list)

    @property
    def container_loads_from_s3(self) -> bool:
        return self.delivery in ("staged", "s3")

    def summary(self) -> list[str]:
        """A few lines for people (plan, artifact, report): where, how, and what it costs."""
        src = self.source
        size = (f"{len(src.files)} files, {src.total_bytes / 1e9:.2f} GB" if src.files
                else "file list not known")
        what = {
            "hub": f"the container downloads {src.id} from the Hub at start-up",
            "staged": f"staged from this machine into {self.prefix} ({size}); the container "
                      "reads them from /opt/ml/model",
            "s3": f"the container reads {src.id} ({size}) from /opt/ml/model",
            "local": f"the model server reads {src.id} on this machine",
        }[self.delivery]
        lines = [f"weights: {what}"]
        if src.kind == "hub":
            lines.append(f"access: {src.access}" + (f", commit {src.commit}" if src.commit
                                                    else ""))
        lines.append("network isolation: " + ("on" if self.network_isolation else "off"))
        return lines + [f"warning: {w}" for w in self.warnings]


# ---- the token --------------------------------------------------------------------------------

TOKEN_TO_CONTAINER_WARNING = (
    "model.token_to_container: the Hub token is passed to the container as HF_TOKEN and is "
    "readable by anyone allowed sagemaker:DescribeModel on this account"
)


def hub_token(secret_block: str | None) -> SecretStr | None:
    """The runner's Hub token: a Prefect Secret block when the config names one, else HF_TOKEN.
    Typed SecretStr so that printing or dumping it never shows the value."""
    if secret_block:
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(secret_block).get()
        except ValueError as exc:
            raise UserInputError("model.hf_token_secret", f"no Prefect Secret block named "
                                 f"{secret_block!r} ({exc})") from None
        return SecretStr(str(value)) if value else None
    value = os.environ.get("HF_TOKEN")
    return SecretStr(value) if value else None


def _plain(token: SecretStr | None) -> str | None:
    return token.get_secret_value() if token is not None else None


# ---- the Hub ---------------------------------------------------------------------------------


def hub_endpoint() -> str:
    """Read at each call (huggingface_hub reads HF_ENDPOINT once, at import)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def select_files(names: list[str], trust_remote_code: bool) -> list[str]:
    """The repository files the container needs (see MODEL_FILE_PATTERNS)."""
    from huggingface_hub.utils import filter_repo_objects

    root = [n for n in names if "/" not in n]
    allow = list(MODEL_FILE_PATTERNS) + (list(CODE_PATTERNS) if trust_remote_code else [])
    chosen = list(filter_repo_objects(root, allow_patterns=allow))
    if not any(n.endswith(".safetensors") for n in chosen):
        chosen += list(filter_repo_objects(root, allow_patterns=list(BIN_WEIGHT_PATTERNS)))
    return sorted(chosen)


def hub_source(repo_id: str, revision: str | None, token: SecretStr | None,
               trust_remote_code: bool = False) -> ModelSource:
    """The repository's files (sizes, LFS sha256, git blob ids) at the commit the revision
    names, after checking that this token may download them. Access problems are
    UserInputError on model.id saying what to do; other failures propagate (Hub unreachable)."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = hub_endpoint()
    page = f"{endpoint}/{repo_id}"
    try:
        info = HfApi(endpoint=endpoint).model_info(
            repo_id, revision=revision, files_metadata=True, token=_plain(token) or False)
        gated = bool(info.gated)
        # The metadata of a gated repository is public; its files are not: ask for one file
        # the way the download will, with the same token.
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json", revision=info.sha,
                                        endpoint=endpoint),
                             token=_plain(token) or False, endpoint=endpoint)
    except GatedRepoError:
        if token is None:
            raise UserInputError("model.id", f"{repo_id} is gated on the Hub: accept its licence "
                                 f"at {page} and set HF_TOKEN (or model.hf_token_secret) to a "
                                 "token of that account") from None
        raise UserInputError("model.id", f"{repo_id} is gated and this Hub token has no access: "
                             f"accept the licence at {page} with the token's account (or wait "
                             "for the approval), then rerun") from None
    except RevisionNotFoundError:
        raise UserInputError("model.revision", f"{revision!r} is not a branch, tag or commit "
                             f"of {repo_id}") from None
    except RepositoryNotFoundError:
        hint = ("check the id, or set HF_TOKEN (or model.hf_token_secret) if it is private"
                if token is None else "check the id and that this token may read it")
        raise UserInputError("model.id", f"{repo_id} was not found on the Hub or is private: "
                             f"{hint}") from None
    by_name = {s.rfilename: s for s in info.siblings or []}
    files = []
    for name in select_files(list(by_name), trust_remote_code):
        s = by_name[name]
        if s.size is None:
            continue
        files.append(WeightFile(name=name, size=s.size,
                                sha256=s.lfs.sha256 if s.lfs else None,
                                git_sha1=None if s.lfs else s.blob_id))
    access: Access = "gated" if gated else ("private" if info.private else "public")
    return ModelSource(kind="hub", id=repo_id, revision=revision, commit=info.sha,
                       access=access, files=files)


# ---- a local directory -----------------------------------------------------------------------


def local_source(path: str | Path, trust_remote_code: bool = False) -> ModelSource:
    """The directory's model files with their sizes; their sha256 is computed when staging
    (reading tens of GB belongs to that step, not to planning). Only regular files inside
    the directory count: a symbolic link that leads out of it (vocab.txt ->
    ~/.aws/credentials) would be staged with its target's contents, so it is a
    UserInputError naming it (inside_model_dir)."""
    root = Path(path).resolve()
    names = [p.relative_to(root).as_posix() for p in sorted(root.iterdir())
             if inside_model_dir(root, p) and p.is_file()]
    files = [WeightFile(name=n, size=(root / n).stat().st_size)
             for n in select_files(names, trust_remote_code)]
    return ModelSource(kind="local", id=str(root), files=files)


def inside_model_dir(root: Path, entry: Path) -> bool:
    """True for an entry that is (or links to) something inside the model directory root.
    The one exception is the Hugging Face cache's own layout, where every file of
    snapshots/<commit>/ links to ../../blobs/<hash> of the same repository. Any other link
    out is refused: the file would travel with its target's contents."""
    if not entry.is_symlink():
        return True
    real = entry.resolve()
    cache_blobs = root.parent.parent / "blobs"
    if real.is_relative_to(root) or (root.parent.name == "snapshots"
                                     and real.parent == cache_blobs):
        return True
    raise UserInputError("model.id", f"{entry} is a symbolic link out of the model directory "
                         f"(to {real}): only files inside it are staged; replace the link by "
                         "a copy of the file, or remove it")


# ---- an s3:// prefix -------------------------------------------------------------------------


def s3_source(s3: Any, uri: str) -> tuple[ModelSource, dict, int | None]:
    """The prefix's files, its config.json, and the exact parameter count from the
    safetensors headers (two ranged reads per file; no weights are downloaded)."""
    bucket, prefix = split_s3(uri)
    files: list[WeightFile] = []
    for page in s3.get_paginator("list_objects_v2").paginate(**list_prefix_params(bucket,
                                                                                  prefix)):
        for obj in page.get("Contents", []):
            name = obj["Key"][len(prefix):]
            if name and not name.endswith("/"):
                files.append(WeightFile(name=name, size=int(obj["Size"])))
    names = {f.name for f in files}
    if "config.json" not in names:
        raise UserInputError("model.id", f"{uri} holds no config.json (is it the folder that "
                                         "holds the model files?)")
    cfg = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "config.json")["Body"].read())
    total = 0
    shards = sorted(f.name for f in files if f.name.endswith(".safetensors") and "/" not in f.name)
    for name in shards:
        total += safetensors_parameters(s3, bucket, prefix + name)
    source = ModelSource(kind="s3", id=f"s3://{bucket}/{prefix}", files=files)
    if "serving.properties" in names:
        source.note = ("the prefix holds its own serving.properties, which overrides the "
                       "settings lmiflow passes as environment variables")
    return source, cfg, (total or None)


def list_prefix_params(bucket: str, prefix: str) -> dict[str, str]:
    return {"Bucket": bucket, "Prefix": prefix}


def safetensors_parameters(s3: Any, bucket: str, key: str) -> int:
    """Parameter count of one safetensors file in S3, from its header (two ranged reads)."""
    def read(start: int, length: int) -> bytes:
        rng = f"bytes={start}-{start + length - 1}"
        return s3.get_object(Bucket=bucket, Key=key, Range=rng)["Body"].read()

    return sum(math.prod(s) for s in safetensors_shapes(read, f"s3://{bucket}/{key}",
                                                        "model.id").values())


def safetensors_shapes(read: Callable[[int, int], bytes], where: str,
                       field: str = "model") -> dict[str, list[int]]:
    """Each tensor's shape from a safetensors header: 8 bytes of little-endian header length,
    then the JSON header (format: huggingface/safetensors). Read by hand rather than with the
    safetensors package, which only the `local` extra installs and which reads local files
    only (S3 is read by ranges). A file that is not one is UserInputError naming it."""
    not_one = UserInputError(field, f"{where} is not a safetensors file")
    head = read(0, 8)
    if len(head) != 8:
        raise not_one
    (length,) = struct.unpack("<Q", head)
    if not 2 <= length <= 100_000_000:
        raise not_one
    try:
        header = json.loads(read(8, length))
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or 4300-digit numbers
        raise not_one from None
    if not isinstance(header, dict):
        raise not_one
    shapes = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise UserInputError(field, f"{where}: tensor {name[:80]!r} has no valid shape")
        shapes[name] = shape
    return shapes


def local_safetensors(root: str | Path) -> dict[str, list[int]] | None:
    """Every tensor's shape in a local model directory's weights, chosen as transformers and
    huggingface_hub choose them: the shards model.safetensors.index.json names, else
    model.safetensors (a consolidated.safetensors beside them is another copy of the same
    weights). None when the directory holds neither."""
    root = Path(root)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise UserInputError("model", f"{index} is not a safetensors index (a JSON "
                                          "object with a weight_map)") from None
    elif (root / "model.safetensors").is_file():
        names = ["model.safetensors"]
    else:
        return None
    shapes: dict[str, list[int]] = {}
    for name in names:
        path = root / str(name)
        if "/" in str(name) or not path.is_file():
            raise UserInputError("model", f"{index} names {str(name)[:80]!r}, which is not a "
                                          "file in the model directory")
        inside_model_dir(root.resolve(), path)  # a shard linked out of it is not even read
        try:
            with path.open("rb") as f:
                def read(start: int, length: int, f=f) -> bytes:
                    f.seek(start)
                    return f.read(length)

                shapes.update(safetensors_shapes(read, str(path)))
        except OSError as exc:
            raise UserInputError("model", f"{path} cannot be read: {exc.strerror}") from None
    return shapes


def s3_read_requests(source: ModelSource, step: str = "fetch_config") -> list[AwsRequest]:
    """The reads s3_source makes, as data (for the run's request list)."""
    bucket, prefix = split_s3(source.id)
    reqs = [AwsRequest(service="s3", operation="ListObjectsV2",
                       params=list_prefix_params(bucket, prefix), step=step),
            AwsRequest(service="s3", operation="GetObject",
                       params={"Bucket": bucket, "Key": prefix + "config.json"}, step=step)]
    for f in source.files:
        if f.name.endswith(".safetensors") and "/" not in f.name:
            key = prefix + f.name
            reqs.append(AwsRequest(service="s3", operation="GetObject", step=step,
                                   params={"Bucket": bucket, "Key": key, "Range": "bytes=0-7"},
                                   when="then the header's length in bytes from offset 8"))
    return reqs


# ---- the decision ----------------------------------------------------------------------------


def plan_weights(spec: Any, source: ModelSource) -> WeightsPlan:
    """How the container gets the weights, from the config (model.weights,
    model.token_to_container, target.*) and what the source is. Contradictions are
    UserInputError naming the field: found at plan time, before anything is created."""
    m, t = spec.model, spec.target
    warnings = [source.note] if source.note else []
    if t.kind == "local":
        if source.kind == "s3":
            raise UserInputError("model.id", "an s3:// model needs target.kind sagemaker (the "
                                 "local target serves a directory or a Hub id)")
        if m.weights == "stage":
            warnings.append("model.weights: stage applies to SageMaker; the local target reads "
                            "the model on this machine")
        delivery: Delivery = "local" if source.kind == "local" else "hub"
        return WeightsPlan(source=source, delivery=delivery, warnings=warnings,
                           network_isolation=bool(t.network_isolation))

    if source.kind == "s3":
        if m.weights != "auto":
            raise UserInputError("model.weights", "an s3:// model is loaded from its own "
                                 "prefix: leave model.weights at auto")
        if m.token_to_container:
            raise UserInputError("model.token_to_container", "an s3:// model needs no Hub token")
        delivery, prefix = "s3", source.id
    elif source.kind == "local":
        if m.weights == "hub":
            raise UserInputError("model.weights", "a local directory is not on the Hub: use "
                                 "stage (or auto) to copy it into target.s3_uri")
        delivery, prefix = "staged", None
    else:
        closed = source.access in ("gated", "private")
        if m.weights == "stage":
            delivery = "staged"
        elif m.weights == "hub":
            if closed and not m.token_to_container:
                raise UserInputError("model.weights", f"hub: {source.id} is {source.access}, so "
                                     "the container cannot download it without a token; use "
                                     "stage (the default for it) or set "
                                     "model.token_to_container: true")
            delivery = "hub"
        elif source.access == "public" or (closed and m.token_to_container):
            delivery = "hub"
        else:  # gated, private, or not known (Hub unreachable): the choice that works for all
            delivery = "staged"
            if source.access == "unknown":
                warnings.append("weights planned to be staged, which works for public and "
                                "gated models alike")
        if m.token_to_container and delivery != "hub":
            raise UserInputError("model.token_to_container", "only when the container downloads "
                                 "from the Hub (model.weights: hub)")
        prefix = None
    if delivery == "staged":
        if not t.s3_uri:
            raise UserInputError("target.s3_uri", f"required to stage the weights of {m.id}")
        prefix = staging_prefix(t.s3_uri, source)
    isolation = t.network_isolation
    if isolation is None:
        isolation = delivery in ("staged", "s3")
    elif isolation and delivery == "hub":
        raise UserInputError("target.network_isolation", f"the container downloads {source.id} "
                             "from the Hub, which needs the network; use model.weights: stage")
    if m.token_to_container:
        warnings.append(TOKEN_TO_CONTAINER_WARNING)
    if delivery == "hub" and t.vpc is not None:
        warnings.append("target.vpc: the container reaches the Hub only through the VPC's NAT "
                        "gateway (or stage the weights)")
    return WeightsPlan(source=source, delivery=delivery, prefix=prefix,
                       token_to_container=m.token_to_container, network_isolation=isolation,
                       warnings=warnings)


def staging_prefix(s3_uri: str, source: ModelSource) -> str:
    """Where staged weights live: one folder per Hub commit (immutable, shared by every config
    and run of that commit, so a resumed or repeated staging finds its files), or per local
    directory and file list."""
    import hashlib

    base = s3_uri if s3_uri.endswith("/") else s3_uri + "/"
    if source.kind == "hub":
        commit = source.commit or source.revision or "main"
        return f"{base}weights/{source.id.replace('/', '--')}/{commit}/"
    listing = json.dumps([(f.name, f.size) for f in source.files]).encode()
    digest = hashlib.sha256(listing).hexdigest()[:12]
    return f"{base}weights/local/{Path(source.id).name}-{digest}/"
