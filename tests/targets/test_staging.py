"""Staging weights into S3 from the runner: a Hub stand-in (its files behind a CDN redirect)
and S3 through a moto server, so the real huggingface_hub, boto3 transfer-manager and
multipart code paths run. Covers verification, resume, a killed upload, and that the token
reaches the Hub and nothing else."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from lmiflow.targets.aws_requests import AwsRequest, guard, validate
from lmiflow.targets.staging import (
    META_GIT_SHA1,
    META_SHA256,
    MIB,
    IntegrityError,
    StagingConfig,
    part_size_for,
    planned_requests,
    stage,
)
from lmiflow.targets.weights import hub_source, local_source
from tests.hub_standin import HubStandIn, Repo, git_blob_id

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_" + "StAgInGt0ken" * 3
BUCKET = "lmiflow-bucket"
PREFIX = f"s3://{BUCKET}/lf/weights/org--gated/main/"
SMALL = StagingConfig(part_size=5 * MIB, concurrency=4, buffered_parts=2)


def model_files(big_mib: int = 12) -> dict[str, bytes]:
    big = random.Random(7).randbytes(big_mib * MIB)
    return {"config.json": json.dumps({"model_type": "llama"}).encode(),
            "tokenizer.json": b'{"v": 1}', "model-00001-of-00002.safetensors": big,
            "model-00002-of-00002.safetensors": big[: 3 * MIB]}


@pytest.fixture
def hub(hub_standin):
    return hub_standin({"org/gated": Repo(files=model_files(), gated=True, tokens={TOKEN})})


def objects(s3, prefix="lf/") -> dict[str, dict]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for o in page.get("Contents", []):
            got = s3.get_object(Bucket=BUCKET, Key=o["Key"])
            out[o["Key"]] = {"body": got["Body"].read(), "meta": got["Metadata"]}
    return out


def open_uploads(s3) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


def recording(s3) -> list[AwsRequest]:
    seen: list[AwsRequest] = []
    guard(s3, seen.append)
    return seen


def test_gated_model_is_staged_verified_and_the_token_goes_only_to_the_hub(hub, moto_s3):
    _, s3 = moto_s3
    src = hub_source("org/gated", None, SecretStr(TOKEN))
    progress = []
    report = stage(s3, src, PREFIX, token=SecretStr(TOKEN), config=SMALL,
                   on_progress=progress.append)
    files = model_files()
    got = objects(s3)
    assert {k.removeprefix("lf/weights/org--gated/main/"): v["body"] for k, v in got.items()} \
        == files
    big = got["lf/weights/org--gated/main/model-00001-of-00002.safetensors"]
    assert big["meta"] == {META_SHA256: hashlib.sha256(files[
        "model-00001-of-00002.safetensors"]).hexdigest()}
    assert got["lf/weights/org--gated/main/config.json"]["meta"] == {
        META_GIT_SHA1: git_blob_id(files["config.json"])}
    assert report.bytes_uploaded == report.bytes_total == sum(len(b) for b in files.values())
    assert [f.status for f in report.files] == ["uploaded"] * 4
    # small files first, so a killed run has finished them
    assert [f.name for f in report.files][-1] == "model-00001-of-00002.safetensors"
    # progress: monotonic, ends complete
    done = [p.done_bytes for p in progress]
    assert done == sorted(done) and progress[-1].done_bytes == report.bytes_total
    assert progress[-1].eta_s == 0
    # the token: sent to the Hub, never to its CDN, never into S3
    assert {s for s, _, auth in hub.auth_seen if auth} == {"hub"}
    assert all(TOKEN.encode() not in v["body"] and TOKEN not in json.dumps(v["meta"])
               for v in got.values())
    assert open_uploads(s3) == []


def test_requests_sent_are_the_planned_ones_and_valid(hub, moto_s3):
    _, s3 = moto_s3
    src = hub_source("org/gated", None, SecretStr(TOKEN))
    sent = recording(s3)
    stage(s3, src, PREFIX, token=SecretStr(TOKEN), config=SMALL)
    planned = planned_requests(src, PREFIX, SMALL)
    for r in planned:
        validate(r)

    def ops(reqs):  # one entry per (operation, key), UploadPart's repeats folded
        return sorted({(r.operation, r.params.get("Key")) for r in reqs})

    # a first staging finds no stale upload to abort
    assert ops(sent) == ops(r for r in planned if r.operation != "AbortMultipartUpload")
    parts = [r for r in sent if r.operation == "UploadPart"]
    big = 12 * MIB
    assert len([p for p in parts if p.params["Key"].endswith("00001-of-00002.safetensors")]) \
        == -(-big // part_size_for(big, SMALL))


def test_a_rerun_skips_every_verified_object(hub, moto_s3):
    _, s3 = moto_s3
    src = hub_source("org/gated", None, SecretStr(TOKEN))
    stage(s3, src, PREFIX, token=SecretStr(TOKEN), config=SMALL)
    downloads = len([a for a in hub.auth_seen if "/resolve/" in a[1] or a[0] == "cdn"])
    sent = recording(s3)
    report = stage(s3, src, PREFIX, token=SecretStr(TOKEN), config=SMALL)
    assert [f.status for f in report.files] == ["skipped"] * 4
    assert report.bytes_skipped == report.bytes_total and report.bytes_uploaded == 0
    assert {r.operation for r in sent} == {"ListMultipartUploads", "ListObjectsV2", "HeadObject"}
    assert len([a for a in hub.auth_seen if "/resolve/" in a[1] or a[0] == "cdn"]) == downloads


def test_a_wrong_or_unverified_object_is_uploaded_again(hub, moto_s3):
    _, s3 = moto_s3
    src = hub_source("org/gated", None, SecretStr(TOKEN))
    stage(s3, src, PREFIX, token=SecretStr(TOKEN), config=SMALL)
    key = "lf/weights/org--gated/main/tokenizer.json"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b'{"v": 2}')  # same size, no digest
    s3.delete_object(Bucket=BUCKET, Key="lf/weights/org--gated/main/config.json")
    report = stage(s3, src, PREFIX, token=SecretStr(TOKEN), config=SMALL)
    assert {f.name: f.status for f in report.files} == {
        "tokenizer.json": "uploaded", "config.json": "uploaded",
        "model-00001-of-00002.safetensors": "skipped",
        "model-00002-of-00002.safetensors": "skipped"}
    assert objects(s3)[key]["body"] == b'{"v": 1}'


@pytest.mark.parametrize("corrupt", ["config.json", "model-00001-of-00002.safetensors"])
def test_bytes_that_do_not_match_the_hub_never_become_an_object(hub, moto_s3, corrupt):
    _, s3 = moto_s3
    src = hub_source("org/gated", None, SecretStr(TOKEN))
    hub.repos["org/gated"].corrupt.add(corrupt)
    with pytest.raises(IntegrityError, match="does not match"):
        stage(s3, src, PREFIX, token=SecretStr(TOKEN),
              config=SMALL.model_copy(update={"attempts": 2}))
    keys = objects(s3)
    assert not any(k.endswith(corrupt) for k in keys)
    assert open_uploads(s3) == []  # the multipart upload was aborted


def test_a_truncated_download_is_caught(hub, moto_s3):
    _, s3 = moto_s3
    src = hub_source("org/gated", None, SecretStr(TOKEN))
    name = "model-00002-of-00002.safetensors"
    hub.repos["org/gated"].files[name] = hub.repos["org/gated"].files[name][:-1]
    with pytest.raises(IntegrityError, match="bytes, expected"):
        stage(s3, src, PREFIX, token=SecretStr(TOKEN),
              config=SMALL.model_copy(update={"attempts": 1}))
    assert not any(k.endswith(name) for k in objects(s3))


def test_local_directory_is_staged_with_sha256_and_resumes(tmp_path, moto_s3):
    _, s3 = moto_s3
    for name, data in model_files(6).items():
        (tmp_path / name).write_bytes(data)
    src = local_source(tmp_path)
    prefix = f"s3://{BUCKET}/lf/weights/local/x/"
    stage(s3, src, prefix, config=SMALL)
    got = objects(s3, "lf/weights/local/x/")
    for name, data in model_files(6).items():
        assert got[f"lf/weights/local/x/{name}"]["body"] == data
        assert got[f"lf/weights/local/x/{name}"]["meta"] == {
            META_SHA256: hashlib.sha256(data).hexdigest()}
    (tmp_path / "tokenizer.json").write_bytes(b'{"v": 9}')  # same size, new content
    report = stage(s3, src, prefix, config=SMALL)
    assert {f.name: f.status for f in report.files}["tokenizer.json"] == "uploaded"
    assert [f.status for f in report.files].count("skipped") == 3


def test_part_size_grows_past_ten_thousand_parts():
    cfg = StagingConfig(part_size=16 * MIB)
    assert part_size_for(10 * MIB, cfg) == 16 * MIB
    huge = 200 * 1024 * MIB  # 200 GiB: 16 MiB parts would be 12,800
    assert -(-huge // part_size_for(huge, cfg)) <= 10_000


KILLED_CHILD = """
import os, sys
from pydantic import SecretStr
from tests.aws_fakes import s3_client
from lmiflow.targets.staging import StagingConfig, stage, MIB
from lmiflow.targets.weights import hub_source
token = SecretStr(os.environ["STAGE_TOKEN"])
src = hub_source("org/gated", None, token)
stage(s3_client(sys.argv[1]), src, sys.argv[2], token=token,
      config=StagingConfig(part_size=5 * MIB, concurrency=2, buffered_parts=1))
"""


@pytest.mark.slow
def test_resume_after_a_killed_upload(hf_env, moto_s3, point_hf_at):
    url, s3 = moto_s3
    files = model_files(20)
    big = "model-00001-of-00002.safetensors"
    repo = Repo(files=files, gated=True, tokens={TOKEN}, slow={big: 0.5})
    with HubStandIn({"org/gated": repo}) as hub:
        point_hf_at(hub.url)
        env = {**os.environ, "STAGE_TOKEN": TOKEN,
               "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, url, PREFIX], env=env,
                                 cwd=ROOT, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        try:  # kill it once the small files are done and the big one is under way
            while time.monotonic() < deadline:
                uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
                if any(u["Key"].endswith(big) for u in uploads):
                    up = next(u for u in uploads if u["Key"].endswith(big))
                    parts = s3.list_parts(Bucket=BUCKET, Key=up["Key"],
                                          UploadId=up["UploadId"]).get("Parts", [])
                    if parts:
                        break
                assert child.poll() is None, child.stderr.read().decode()[-2000:]
                time.sleep(0.05)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait(30)
        before = objects(s3)
        assert not any(k.endswith(big) for k in before)  # not an object: only parts
        done_before = {k for k in before}
        assert len(done_before) == 3  # the three smaller files finished first
        repo.slow.clear()
        report = stage(s3, hub_source("org/gated", None, SecretStr(TOKEN)), PREFIX,
                       token=SecretStr(TOKEN), config=SMALL)
    status = {f.name: f.status for f in report.files}
    assert status.pop(big) == "uploaded" and set(status.values()) == {"skipped"}
    assert report.bytes_skipped == sum(len(files[n]) for n in status)
    after = objects(s3)
    assert {k.rsplit("/", 1)[1]: v["body"] for k, v in after.items()} == files


def test_incomplete_uploads_older_than_a_day_are_aborted(hub, moto_s3, monkeypatch):
    from lmiflow.targets import staging

    _, s3 = moto_s3
    key = "lf/weights/org--gated/main/old-shard.safetensors"
    s3.create_multipart_upload(Bucket=BUCKET, Key=key)  # moto dates every upload 2010-11-10
    s3.create_multipart_upload(Bucket=BUCKET, Key="elsewhere/x.bin")  # not under the prefix
    src = hub_source("org/gated", None, SecretStr(TOKEN))
    day = staging.STALE_UPLOAD_S
    monkeypatch.setattr(staging, "STALE_UPLOAD_S", 100 * 365 * 86400)
    assert stage(s3, src, PREFIX, token=SecretStr(TOKEN), config=SMALL
                 ).stale_uploads_aborted == 0  # young enough to be a concurrent run's
    assert key in open_uploads(s3)
    monkeypatch.setattr(staging, "STALE_UPLOAD_S", day)
    sent = recording(s3)
    report = stage(s3, src, PREFIX, token=SecretStr(TOKEN), config=SMALL)
    assert report.stale_uploads_aborted == 1
    assert open_uploads(s3) == ["elsewhere/x.bin"]
    # the abort was planned (shown in the dry run, and so in the runner's IAM policy) on the
    # same bucket and folder as it was sent
    from lmiflow.targets.iam import folder_of

    aborts = [(r.params["Bucket"], folder_of(r.params["Key"])) for r in sent
              if r.operation == "AbortMultipartUpload"]
    planned = [(r.params["Bucket"], folder_of(r.params["Key"]))
               for r in staging.planned_requests(src, PREFIX, SMALL)
               if r.operation == "AbortMultipartUpload"]
    assert aborts == [(BUCKET, folder_of(key))] and planned == aborts
