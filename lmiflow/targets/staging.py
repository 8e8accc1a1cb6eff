"""Stage model weights into an S3 prefix from the machine that runs the flow.

Why from the runner: a gated or private model needs a Hub token, and a token handed to the
container is readable by anyone allowed sagemaker:DescribeModel. The runner downloads with its
own token and SageMaker copies the prefix to /opt/ml/model, which for a large model is also a
faster start than a download from the Hub inside the container.

How, for files of tens of GB on a small machine:
- File by file, streamed: the Hub's (or the disk's) bytes go straight into boto3's managed
  upload (s3transfer), which splits them into parts uploaded in parallel. Nothing touches the
  local disk; memory holds at most `buffered_parts` + `concurrency` parts.
- Verified while streaming: the bytes are counted and hashed (sha256 for LFS and local files,
  the git blob id for small Hub files). A mismatch raises inside the stream, before the last
  bytes reach s3transfer, so the multipart upload is aborted and no object is created.
- Resumable: each object records the digest it was verified against (x-amz-meta-lmiflow-*);
  an object of the right size and digest is skipped on the next run. A killed run leaves an
  incomplete multipart upload behind, which is not an object: that file starts again.
  Incomplete uploads older than a day under the prefix are aborted (younger ones may belong
  to a run staging the same commit right now).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from lmiflow.targets.aws_requests import AwsRequest, split_s3
from lmiflow.targets.weights import ModelSource, WeightFile, hub_endpoint

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
META_SHA256 = "lmiflow-sha256"
META_GIT_SHA1 = "lmiflow-git-sha1"
STALE_UPLOAD_S = 24 * 3600


class StagingConfig(BaseModel):
    part_size: int = Field(default=16 * MIB, ge=5 * MIB, description="multipart part size")
    concurrency: int = Field(default=8, ge=1, le=64, description="parts uploaded at once")
    buffered_parts: int = Field(default=4, ge=1, le=64,
                                description="parts read ahead of the uploads")
    attempts: int = Field(default=3, ge=1, le=10, description="tries per file")


class FileResult(BaseModel):
    name: str
    size: int
    status: Literal["uploaded", "skipped"]
    seconds: float = 0.0


class StagingReport(BaseModel):
    source: str
    destination: str
    files: list[FileResult] = Field(default_factory=list)
    bytes_total: int = 0
    bytes_uploaded: int = 0
    bytes_skipped: int = 0
    seconds: float = 0.0
    stale_uploads_aborted: int = 0

    @property
    def bytes_per_s(self) -> float | None:
        return self.bytes_uploaded / self.seconds if self.seconds > 0 else None

    def summary(self) -> str:
        up = sum(1 for f in self.files if f.status == "uploaded")
        rate = f" at {self.bytes_per_s / 1e6:.0f} MB/s" if self.bytes_per_s else ""
        return (f"{up} of {len(self.files)} files uploaded ({self.bytes_uploaded / 1e9:.2f} GB"
                f"{rate}), {len(self.files) - up} already there "
                f"({self.bytes_skipped / 1e9:.2f} GB) in {self.seconds:.0f} s")


class Progress(BaseModel):
    """What a progress bar needs: bytes done of total (skipped files count as done), the
    upload rate so far and the time left at that rate."""

    done_bytes: int
    total_bytes: int
    bytes_per_s: float | None
    eta_s: float | None
    file: str | None

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 1.0

    def text(self) -> str:
        rate = f", {self.bytes_per_s / 1e6:.0f} MB/s" if self.bytes_per_s else ""
        eta = f", {self.eta_s / 60:.0f} min left" if self.eta_s and self.eta_s >= 90 else (
            f", {self.eta_s:.0f} s left" if self.eta_s else "")
        return f"{self.done_bytes / 1e9:.2f} of {self.total_bytes / 1e9:.2f} GB{rate}{eta}"


class IntegrityError(RuntimeError):
    """A file's bytes do not match what its source says they are."""


# ---- verification while streaming -----------------------------------------------------------


def _hasher(f: WeightFile) -> tuple[Any, str, str]:
    """(hash object, expected hex digest, metadata key)."""
    if f.sha256:
        return hashlib.sha256(), f.sha256, META_SHA256
    if f.git_sha1:
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\0" % f.size)  # git's blob id: sha1 of this header and the content
        return h, f.git_sha1, META_GIT_SHA1
    raise ValueError(f"{f.name}: no digest to verify against")


class VerifyingReader:
    """A read()-able view of a byte-chunk iterator that counts and hashes what passes and
    raises IntegrityError before handing over the last bytes of a file that is not what it
    should be. read(n) returns n bytes unless the stream has ended (s3transfer relies on
    that to tell a short final part from a slow one)."""

    def __init__(self, chunks: Iterator[bytes], f: WeightFile):
        self._chunks = chunks
        self._file = f
        self._hash, self._expected, _ = _hasher(f)
        self._buf = bytearray()
        self._seen = 0
        self._ended = False

    def _fill(self, n: int) -> None:
        while len(self._buf) < n and not self._ended:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._ended = True
                break
            self._seen += len(chunk)
            if self._seen > self._file.size:
                raise IntegrityError(f"{self._file.name}: more than the expected "
                                     f"{self._file.size:,} bytes")
            self._hash.update(chunk)
            self._buf += chunk
        if self._seen == self._file.size or self._ended:
            self._check()

    def _check(self) -> None:
        if self._seen != self._file.size:
            raise IntegrityError(f"{self._file.name}: {self._seen:,} bytes, expected "
                                 f"{self._file.size:,}")
        digest = self._hash.hexdigest()
        if digest != self._expected:
            raise IntegrityError(f"{self._file.name}: digest {digest[:12]}… does not match "
                                 f"the source's {self._expected[:12]}…")

    def read(self, n: int = -1) -> bytes:
        self._fill(self._file.size + 1 if n is None or n < 0 else n)
        if n is None or n < 0:
            n = len(self._buf)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def file_chunks(path: Path, size: int = MIB) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(size):
            yield chunk


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    for chunk in file_chunks(path):
        h.update(chunk)
    return h.hexdigest()


class _HubStream:
    """The bytes of one Hub file at a commit, streamed through huggingface_hub's own HTTP
    session (its proxy settings and user agent); the token goes only to the Hub, not to the
    storage host it redirects to (the HTTP client drops it on a cross-origin redirect)."""

    def __init__(self, repo_id: str, commit: str, token: SecretStr | None):
        self.repo_id, self.commit, self.token = repo_id, commit, token

    def __call__(self, f: WeightFile) -> tuple[Iterator[bytes], Callable[[], None]]:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        url = hf_hub_url(self.repo_id, f.name, revision=self.commit, endpoint=hub_endpoint())
        token = self.token.get_secret_value() if self.token is not None else False
        ctx = get_session().stream("GET", url, headers=build_hf_headers(token=token),
                                   follow_redirects=True, timeout=60)
        response = ctx.__enter__()
        try:
            hf_raise_for_status(response)
        except BaseException:
            ctx.__exit__(None, None, None)
            raise
        return response.iter_bytes(MIB), lambda: ctx.__exit__(None, None, None)


# ---- the staging ----------------------------------------------------------------------------


def planned_requests(source: ModelSource, prefix: str, config: StagingConfig | None = None,
                     step: str = "stage_weights") -> list[AwsRequest]:
    """The requests stage() sends, as data. Per file: one PutObject, or a multipart upload
    (CreateMultipartUpload, UploadPart per part, CompleteMultipartUpload); a resumed run sends
    a HeadObject instead for files already there."""
    config = config or StagingConfig()
    bucket, key_prefix = split_s3(prefix)
    reqs = [
        AwsRequest(service="s3", operation="ListMultipartUploads", step=step,
                   params={"Bucket": bucket, "Prefix": key_prefix},
                   when="uploads an interrupted staging left"),
        AwsRequest(service="s3", operation="AbortMultipartUpload", step=step,
                   params={"Bucket": bucket, "Key": key_prefix + "<key of the upload>",
                           "UploadId": "<from ListMultipartUploads>"},
                   when="for each upload listed that is older than a day"),
        AwsRequest(service="s3", operation="ListObjectsV2", step=step,
                   params={"Bucket": bucket, "Prefix": key_prefix},
                   when="then HeadObject for each object of the right size: resume"),
    ]
    for f in _upload_order(source.files):
        key = key_prefix + f.name
        meta = _metadata(f) if (f.sha256 or f.git_sha1) else {META_SHA256: "<sha256 of the file>"}
        part = part_size_for(f.size, config)
        if f.size < part:
            reqs.append(AwsRequest(service="s3", operation="PutObject", step=step, params={
                "Bucket": bucket, "Key": key, "Body": f"<{f.size} bytes of {f.name}>",
                "Metadata": meta}))
            continue
        parts = -(-f.size // part)
        reqs += [
            AwsRequest(service="s3", operation="CreateMultipartUpload", step=step,
                       params={"Bucket": bucket, "Key": key, "Metadata": meta}),
            AwsRequest(service="s3", operation="UploadPart", step=step, params={
                "Bucket": bucket, "Key": key, "PartNumber": 1, "UploadId": "<from Create>",
                "Body": f"<{part} bytes>"},
                when=f"x {parts} parts of {part // MIB} MiB, {config.concurrency} at a time"),
            AwsRequest(service="s3", operation="CompleteMultipartUpload", step=step, params={
                "Bucket": bucket, "Key": key, "UploadId": "<from Create>",
                "MultipartUpload": {"Parts": [{"PartNumber": 1, "ETag": "<from UploadPart>"}]}},
                when=f"listing all {parts} parts"),
        ]
    return reqs


def part_size_for(size: int, config: StagingConfig) -> int:
    """The configured part size, larger where a file would need more than 10,000 parts."""
    need = -(-size // MAX_PARTS)
    return max(config.part_size, -(-need // MIB) * MIB)


def _upload_order(files: list[WeightFile]) -> list[WeightFile]:
    """Small files first: a killed run has then finished the many small ones."""
    return sorted(files, key=lambda f: (f.size, f.name))


def _metadata(f: WeightFile) -> dict[str, str]:
    _, expected, key = _hasher(f)
    return {key: expected}


def stage(
    s3: Any, source: ModelSource, prefix: str, *, token: SecretStr | None = None,
    config: StagingConfig | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> StagingReport:
    """Copy source's files to prefix (s3://bucket/key-prefix/), skipping those already there
    with the right size and digest. s3 is a boto3 S3 client."""
    from boto3.s3.transfer import TransferConfig

    config = config or StagingConfig()
    bucket, key_prefix = split_s3(prefix)
    files = _upload_order(source.files)
    if source.kind == "local":  # local files carry no digest until they are read once
        root = Path(source.id)
        files = [f.model_copy(update={"sha256": sha256_of(root / f.name)}) for f in files]
    opener = _opener(source, token)
    report = StagingReport(source=source.id, destination=prefix,
                           bytes_total=sum(f.size for f in files))
    report.stale_uploads_aborted = _abort_stale_uploads(s3, bucket, key_prefix)
    existing = _existing_sizes(s3, bucket, key_prefix)
    start = clock()
    lock = threading.Lock()
    state = {"done": 0, "uploaded": 0, "last": -1.0, "file": None}

    def progress(force: bool = False) -> None:
        if on_progress is None:
            return
        now = clock()
        if not force and now - state["last"] < 0.5:
            return
        state["last"] = now
        elapsed = now - start
        # a rate (and an ETA) once there is a second of uploading to measure it on
        rate = state["uploaded"] / elapsed if elapsed >= 1 and state["uploaded"] else None
        left = report.bytes_total - state["done"]
        on_progress(Progress(done_bytes=state["done"], total_bytes=report.bytes_total,
                             bytes_per_s=rate,
                             eta_s=0.0 if left <= 0 else (left / rate if rate else None),
                             file=state["file"]))

    def sent(n: int) -> None:  # s3transfer calls this from its worker threads
        with lock:
            state["done"] += n
            state["uploaded"] += n
            progress()

    for f in files:
        key = key_prefix + f.name
        state["file"] = f.name
        if existing.get(key) == f.size and _verified_copy(s3, bucket, key, f):
            report.files.append(FileResult(name=f.name, size=f.size, status="skipped"))
            report.bytes_skipped += f.size
            with lock:
                state["done"] += f.size
            progress(force=True)
            continue
        part = part_size_for(f.size, config)
        tc = TransferConfig(multipart_threshold=part, multipart_chunksize=part,
                            max_concurrency=config.concurrency, use_threads=True)
        tc.max_in_memory_upload_chunks = config.buffered_parts
        t0 = clock()
        for attempt in range(1, config.attempts + 1):
            chunks, close = opener(f)
            with lock:
                before = state["uploaded"]
            try:
                s3.upload_fileobj(VerifyingReader(chunks, f), bucket, key,
                                  ExtraArgs={"Metadata": _metadata(f)}, Config=tc,
                                  Callback=sent)
                break
            except Exception as exc:
                with lock:  # the bytes of a failed try are sent again
                    undo = state["uploaded"] - before
                    state["uploaded"] -= undo
                    state["done"] -= undo
                if attempt == config.attempts:
                    raise
                logger.warning("staging %s failed (%s): try %d of %d", f.name,
                               type(exc).__name__, attempt + 1, config.attempts)
            finally:
                close()
        report.files.append(FileResult(name=f.name, size=f.size, status="uploaded",
                                       seconds=round(clock() - t0, 3)))
        report.bytes_uploaded += f.size
    report.seconds = round(clock() - start, 3)
    progress(force=True)
    return report


def _opener(source: ModelSource, token: SecretStr | None
            ) -> Callable[[WeightFile], tuple[Iterator[bytes], Callable[[], None]]]:
    if source.kind == "hub":
        if not source.commit:
            raise ValueError(f"{source.id}: the Hub commit is unknown (Hub unreachable?)")
        return _HubStream(source.id, source.commit, token)
    if source.kind == "local":
        root = Path(source.id)
        return lambda f: (file_chunks(root / f.name), lambda: None)
    raise ValueError(f"{source.kind} sources are not staged")


def _abort_stale_uploads(s3: Any, bucket: str, key_prefix: str) -> int:
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=STALE_UPLOAD_S)
    aborted = 0
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket,
                                                                    Prefix=key_prefix):
        for up in page.get("Uploads", []):
            if up["Initiated"] < cutoff:
                s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                aborted += 1
    return aborted


def _existing_sizes(s3: Any, bucket: str, key_prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = int(obj["Size"])
    return out


def _verified_copy(s3: Any, bucket: str, key: str, f: WeightFile) -> bool:
    """The object was written by a staging that verified it against the same digest."""
    head = s3.head_object(Bucket=bucket, Key=key)
    _, expected, meta_key = _hasher(f)
    return int(head["ContentLength"]) == f.size and head.get("Metadata", {}).get(
        meta_key) == expected

