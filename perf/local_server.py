"""Local model server on the demo model: throughput by concurrency, and what the server adds.

1. Output tokens/s at concurrency 1, 4 and 8 (closed loop, non-streaming requests of
   MAX_NEW tokens, greedy). Goal: c=8 gives >= 3x the tokens/s of c=1 (continuous batching).
2. Added latency per request: end-to-end time of one request through HTTP (the server in its
   own process, a client here) minus the time of the same generation through the same engine
   called in-process (no HTTP, no JSON), measured back to back, median over samples. Goal:
   < 5 ms. For reference, also transformers' plain `model.generate` (its own DynamicCache, no
   batching loop).

Run: .venv/bin/python perf/local_server.py [--quick]   (exit 1 when a goal is missed)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from lmiflow.serving.demo_model import ensure_demo_model  # noqa: E402

MAX_NEW = 64
PROMPT = "The quick brown fox jumps over the lazy dog."
GOAL_SCALING = 3.0
GOAL_ADDED_MS = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmiflow.serving.server", "--model-dir", str(model_dir),
         "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("server exited during startup")
        try:
            if httpx.get(url + "/ping", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("server did not become healthy")


def body(max_new: int = MAX_NEW) -> dict:
    return {"inputs": PROMPT, "parameters": {"max_new_tokens": max_new, "details": True}}


def throughput(url: str, concurrency: int, seconds: float) -> tuple[float, int]:
    """Closed loop: each of `concurrency` clients sends the next request when one returns."""
    tokens = [0] * concurrency
    stop_at = time.perf_counter() + seconds

    def client(i: int) -> None:
        with httpx.Client(timeout=120) as c:
            while time.perf_counter() < stop_at:
                r = c.post(url + "/invocations", json=body())
                r.raise_for_status()
                tokens[i] += r.json()["details"]["generated_tokens"]

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(tokens) / (time.perf_counter() - t0), sum(tokens)


def paired_latency(url: str, model_dir: Path, n: int, sizes: tuple[int, ...]
                   ) -> dict[int, dict[str, list[float]]]:
    """Per sample, the same request three ways, back to back so that load from elsewhere on
    the machine hits all three alike: through the HTTP server; through the same engine
    (serving.engine, same batching loop) in this process; through transformers' generate()."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from lmiflow.serving.engine import Engine, Sampling
    from lmiflow.serving.options import load_options

    hf_logging.set_verbosity_error()  # as the server runs it (its per-step checks cost ~4 %)
    engine = Engine(load_options(model_dir).engine)
    ids = engine.encode(PROMPT)
    model = AutoModelForCausalLM.from_pretrained(engine.opts.model_path).eval()
    x = torch.tensor([ids])

    async def direct(k: int) -> int:
        count = 0
        async for _ in engine.generate(ids, k, Sampling(), stream=False):
            count += 1
        return count

    def via_http(c: httpx.Client, k: int) -> None:
        r = c.post(url + "/invocations", json=body(k))
        r.raise_for_status()
        assert r.json()["details"]["generated_tokens"] == k

    def via_engine(k: int) -> None:
        assert asyncio.run(direct(k)) == k

    def via_generate(k: int) -> None:
        with torch.inference_mode():
            model.generate(x, max_new_tokens=k, min_new_tokens=k, do_sample=False)

    out: dict[int, dict[str, list[float]]] = {}
    with httpx.Client(timeout=120) as c:
        calls = {"engine": via_engine, "generate": via_generate,
                 "http": lambda k: via_http(c, k)}
        for k in sizes:
            out[k] = {name: [] for name in calls}
            for i in range(n + 3):  # 3 warm-ups
                for name, call in calls.items():
                    t0 = time.perf_counter()
                    call(k)
                    if i >= 3:
                        out[k][name].append(time.perf_counter() - t0)
    engine.shutdown()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="Shorter windows, fewer samples.")
    args = ap.parse_args()
    seconds, samples = (3.0, 15) if args.quick else (8.0, 40)

    with tempfile.TemporaryDirectory() as tmp:
        weights = ensure_demo_model(Path(tmp) / "demo-model")
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        (model_dir / "serving.properties").write_text(
            f"option.model_id={weights}\noption.max_rolling_batch_size=8\n"
            "option.max_model_len=512\n"
        )
        proc, url = start_server(model_dir)
        try:
            throughput(url, 1, 1.0)  # warm-up
            print(f"demo model, {os.cpu_count()} CPUs, {MAX_NEW} new tokens per request")
            print(f"{'concurrency':>11}  {'tokens/s':>9}  {'x c=1':>6}  tokens")
            rates = {}
            for c in (1, 4, 8):
                rate, total = throughput(url, c, seconds)
                rates[c] = rate
                print(f"{c:>11}  {rate:>9.0f}  {rate / rates[1]:>6.2f}  {total}")
            lat = paired_latency(url, model_dir, samples, (1, MAX_NEW))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)

    added: dict[int, float] = {}
    for k, runs in lat.items():
        med = {name: statistics.median(v) * 1000 for name, v in runs.items()}
        diffs = [(h - e) * 1000 for h, e in zip(runs["http"], runs["engine"], strict=True)]
        added[k] = statistics.median(diffs)
        print(f"\nmedian request, {k} new token(s), c=1, n={samples}:")
        print(f"  through the HTTP server    {med['http']:8.2f} ms")
        print(f"  same engine, in-process    {med['engine']:8.2f} ms")
        print(f"  transformers generate()    {med['generate']:8.2f} ms  (reference, no batching)")
        print(f"  server added latency       {added[k]:8.2f} ms  (median of paired differences)")
    scaling = rates[8] / rates[1]
    print(f"\nserver added latency per request: {added[1]:.2f} ms on a 1-token request "
          f"(goal < {GOAL_ADDED_MS} ms); {added[MAX_NEW]:.2f} ms on a {MAX_NEW}-token one "
          "(noisier: the machine is shared)")
    print(f"throughput c=8 / c=1: {scaling:.2f}x (goal >= {GOAL_SCALING}x)")
    ok = added[1] < GOAL_ADDED_MS and scaling >= GOAL_SCALING
    print("PASS" if ok else "MISS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
