"""Staging weights into S3: a gated model of several hundred MB, from a Hub stand-in on
127.0.0.1 (its big files behind a CDN redirect, as on the Hub) to S3 served by moto in server
mode, through the same code a deploy runs (lmiflow.targets.staging).

Three processes, so each figure belongs to one of them: moto (which keeps every byte in its
memory) in its own process, the Hub stand-in in this one, and the staging in a child whose
peak RSS (getrusage) and bytes written to storage (/proc/self/io write_bytes) are its own.

Figures: throughput of a full staging; the staging process's peak memory against the bound
the config sets ((buffered parts + parallel parts) x part size); disk written; and what a
resumed staging saves after a run killed half way (and a rerun when everything is there).
Times are stage()'s own (process start and the Hub's model info excluded), so the three runs
compare like with like.

Run: .venv/bin/python perf/staging.py [--mib 512]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from lmiflow.targets.staging import MIB, StagingConfig  # noqa: E402
from tests.hub_standin import HubStandIn, Repo  # noqa: E402

TOKEN = "hf_" + "PerfStagingToken" * 2
PREFIX = "s3://perf-bucket/lf/weights/org--gated/main/"

CHILD = """
import json, os, sys, time
from pydantic import SecretStr
from tests.aws_fakes import s3_client
from lmiflow.targets.staging import stage
from lmiflow.targets.weights import hub_source

def written():
    with open("/proc/self/io") as f:
        return int(next(l for l in f if l.startswith("write_bytes")).split()[1])

def peak_rss():  # VmHWM: this process's own peak (ru_maxrss would include the forking parent's)
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("VmHWM")).split()[1]) * 1024

token = SecretStr(os.environ["PERF_TOKEN"])
src = hub_source("org/gated", None, token)
s3 = s3_client(sys.argv[1])
s3.list_buckets()
base_rss = peak_rss()  # interpreter and libraries, before the first byte is staged
t0 = time.perf_counter()
def progress(p):
    print(json.dumps({"fraction": p.fraction}), flush=True)
report = stage(s3, src, sys.argv[2], token=token, on_progress=progress)
print(json.dumps({"done": True, "seconds": time.perf_counter() - t0,
                  "uploaded": report.bytes_uploaded, "skipped": report.bytes_skipped,
                  "peak_rss": peak_rss(),
                  "base_rss": base_rss,
                  "written": written()}), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                             "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(url + "/moto-api/", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start")


def run_child(url: str, hub: str, kill_at: float | None = None) -> dict | None:
    env = {**os.environ, "HF_ENDPOINT": hub, "PERF_TOKEN": TOKEN, "PYTHONPATH": str(ROOT),
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, PREFIX], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    for line in child.stdout:
        msg = json.loads(line)
        if kill_at is not None and msg.get("fraction", 0) >= kill_at:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            return None
        if msg.get("done"):
            child.wait()
            return msg
    raise RuntimeError(f"staging child ended with {child.wait()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512, help="model size in MiB")
    args = ap.parse_args()
    block = os.urandom(16 * MIB)
    shard = args.mib // 2
    files = {"config.json": json.dumps({"model_type": "llama"}).encode(),
             "tokenizer.json": b'{"model": {}}' * 1000,
             "model-00001-of-00002.safetensors": block * (shard // 16),
             "model-00002-of-00002.safetensors": block * ((args.mib - shard) // 16)}
    total = sum(len(b) for b in files.values())
    cfg = StagingConfig()
    bound = (cfg.buffered_parts + cfg.concurrency) * cfg.part_size
    moto, url = start_moto()
    try:
        with HubStandIn({"org/gated": Repo(files=files, gated=True, tokens={TOKEN})}) as hub:
            httpx.put(f"{url}/perf-bucket", timeout=10).raise_for_status()
            full = run_child(url, hub.url)
            rerun = run_child(url, hub.url)
            httpx.post(f"{url}/moto-api/reset", timeout=30).raise_for_status()
            httpx.put(f"{url}/perf-bucket", timeout=10).raise_for_status()
            run_child(url, hub.url, kill_at=0.5)
            resumed = run_child(url, hub.url)
    finally:
        moto.terminate()
        moto.wait(10)
    assert full and rerun and resumed
    rate = full["uploaded"] / full["seconds"]
    print(f"model: {total / 1e6:.0f} MB in {len(files)} files; part {cfg.part_size // MIB} "
          f"MiB, {cfg.concurrency} parts in parallel, {cfg.buffered_parts} read ahead")
    print(f"full staging:      {full['seconds']:6.1f} s  {rate / 1e6:6.0f} MB/s")
    print(f"peak memory:       {full['peak_rss'] / 1e6:6.0f} MB RSS: "
          f"{full['base_rss'] / 1e6:.0f} MB before staging (interpreter, libraries)")
    print(f"                   + {(full['peak_rss'] - full['base_rss']) / 1e6:.0f} MB while "
          f"staging (parts in flight: at most {bound / 1e6:.0f} MB)")
    print(f"disk written:      {full['written'] / 1e6:6.1f} MB (streamed: nothing is cached)")
    saved = full["seconds"] - resumed["seconds"]
    print(f"resumed after a kill at 50 %: {resumed['seconds']:5.1f} s, "
          f"{resumed['skipped'] / 1e6:.0f} MB skipped: saves {saved:.1f} s "
          f"({saved / full['seconds']:.0%})")
    print(f"rerun, all there: {rerun['seconds']:5.1f} s ({rerun['skipped'] / 1e6:.0f} MB "
          f"verified by size and digest, none sent)")
    print(json.dumps({"bytes": total, "full_s": full["seconds"], "bytes_per_s": rate,
                      "peak_rss_bytes": full["peak_rss"], "base_rss_bytes": full["base_rss"],
                      "disk_written_bytes": full["written"],
                      "resumed_s": resumed["seconds"], "resumed_skipped_bytes":
                      resumed["skipped"], "rerun_s": rerun["seconds"]}))


if __name__ == "__main__":
    main()
