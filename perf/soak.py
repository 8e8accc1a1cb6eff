"""Bounded soak of the local model server (`make soak`, MINUTES=5): mixed load for N minutes on
127.0.0.1 — streaming and plain requests, the chat form, clients that disconnect mid-stream,
and bad requests that must get a 4xx — then errors, latency drift and memory growth.
Goals: zero unexpected errors, < 5 % memory growth (after a warm-up minute)."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()

    from lmiflow.serving.demo_model import build_demo_model
    from lmiflow.serving.properties import ServingProperties, render
    from lmiflow.targets.base import EndpointVariant
    from lmiflow.targets.local import LocalTarget

    tmp = Path(tempfile.mkdtemp(prefix="lmiflow-soak-"))
    model = build_demo_model(tmp / "demo-model")
    target = LocalTarget(tmp / "state")
    props = render(ServingProperties(model_id=str(model), max_rolling_batch_size=8,
                                     max_model_len=512, dtype="fp32"))
    data = target.stage("soak-m", {"serving.properties": props})
    target.create_model("soak-m", data, None, {}, {})
    target.create_endpoint_config("soak-ec", "soak-m", EndpointVariant(instance_type="local"), {})
    target.create_endpoint("soak", "soak-ec", {})
    st = target.wait("soak", 180)
    assert st.status == "InService", st
    url = st.url
    reg = (tmp / "state" / "registry.json").read_text()
    import json

    pid = json.loads(reg)["endpoints"]["soak"]["process"]["pid"]

    stop_at = time.monotonic() + args.minutes * 60
    lock = threading.Lock()
    records: list[tuple[float, float]] = []  # (time since start, e2e seconds)
    counts = {"ok": 0, "rejected_as_expected": 0, "disconnects": 0, "errors": 0}
    error_examples: list[str] = []
    t0 = time.monotonic()

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < stop_at:
                kind = rnd.choices(["plain", "stream", "chat", "disconnect", "bad"],
                                   [4, 4, 1, 1, 1])[0]
                n = rnd.randint(1, 32)
                prompt = " ".join(rnd.choice(["the", "model", "serves", "tokens", "fast"])
                                  for _ in range(rnd.randint(1, 40)))
                start = time.monotonic()
                try:
                    if kind == "bad":
                        r = client.post(url, json={"inputs": prompt,
                                                   "parameters": {"max_new_tokens": -1}})
                        ok = 400 <= r.status_code < 500
                        key = "rejected_as_expected"
                    elif kind == "chat":
                        r = client.post(url, json={"messages": [{"role": "user",
                                                                 "content": prompt}],
                                                   "max_tokens": n})
                        ok, key = r.status_code == 200, "ok"
                    elif kind in ("stream", "disconnect"):
                        with client.stream("POST", url, json={
                                "inputs": prompt, "stream": True,
                                "parameters": {"max_new_tokens": n}}) as r:
                            ok, key = r.status_code == 200, "ok"
                            for i, _line in enumerate(r.iter_lines()):
                                if kind == "disconnect" and i >= 1:
                                    key = "disconnects"
                                    break
                    else:
                        r = client.post(url, json={"inputs": prompt,
                                                   "parameters": {"max_new_tokens": n}})
                        ok, key = r.status_code == 200, "ok"
                except httpx.HTTPError as exc:
                    ok, key = False, "errors"
                    msg = f"{kind}: {type(exc).__name__}: {exc}"
                else:
                    msg = f"{kind}: HTTP {r.status_code}"
                with lock:
                    if ok:
                        counts[key] += 1
                        if kind in ("plain", "stream"):
                            records.append((start - t0, time.monotonic() - start))
                    else:
                        counts["errors"] += 1
                        if len(error_examples) < 5:
                            error_examples.append(msg)

    memory: list[tuple[float, int]] = []
    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(args.workers)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        memory.append((time.monotonic() - t0, rss_bytes(pid)))
        time.sleep(5)
    for t in threads:
        t.join()
    memory.append((time.monotonic() - t0, rss_bytes(pid)))
    target.delete_endpoint("soak")

    total = args.minutes * 60
    warm = min(60.0, total / 3)
    first = [e for t, e in records if t < warm] or [0.0]
    last = [e for t, e in records if t > total - warm] or [0.0]
    base = [m for t, m in memory if t >= warm] or [memory[-1][1]]
    growth = (memory[-1][1] - base[0]) / base[0] if base[0] else 0.0
    print(f"soak: {args.minutes:g} min, {args.workers} workers on 127.0.0.1 (demo model)")
    print(f"requests: {sum(counts.values())} ({counts})")
    print(f"unexpected errors: {counts['errors']} (goal 0)" +
          (f"; e.g. {error_examples}" if error_examples else ""))
    p50a, p50b = statistics.median(first), statistics.median(last)
    print(f"latency drift: p50 e2e first {warm:.0f} s {p50a * 1000:.1f} ms, last {warm:.0f} s "
          f"{p50b * 1000:.1f} ms (ratio {p50b / p50a if p50a else float('nan'):.2f})")
    print(f"server RSS: after warm-up {base[0] / 2**20:.1f} MiB, end {memory[-1][1] / 2**20:.1f}"
          f" MiB, growth {growth:+.1%} (goal < 5 %)")
    return 0 if counts["errors"] == 0 and growth < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
