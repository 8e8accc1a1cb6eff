"""Benchmark fidelity: does `lmiflow bench` measure what the endpoint does, under bursts?

A synthetic LMI endpoint (bench.synthetic, its own process) sends the first token TTFT after a
request arrives and the next ones TPOT apart. At each concurrency, requests go out in
lock-step waves (no ramp-up: the worst case for a client, whose own work then sits on the
critical path), once through lmiflow's load generator as `lmiflow bench --url` runs it and
once through a minimal reference client written here on raw asyncio streams (it shares no
code with lmiflow). Each client's error is its p50 / truth − 1; both run against the same
endpoint in the same run, alternating over several rounds (ABBA order), because on a shared
machine the endpoint's own lateness moves both. The median error over the rounds is
compared, with the rounds' range shown.

Bound (issue: benchmarks that tell the truth): |lmiflow error| <= max(1.25 x |reference
error|, 5 %) for p50 TTFT and p50 TPOT at every concurrency. Then the generator's capacity:
streamed lines per second one process sustains, and two.

Run: .venv/bin/python perf/bench_fidelity.py [--quick] [--rounds N] [--levels 1,16,48,64]
(exit 1 when a level misses the bound)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from urllib.parse import urlsplit

from lmiflow.bench.loadgen import LoadConfig, bench_url
from lmiflow.bench.synthetic import serve_in_subprocess

TTFT_MS, TPOT_MS, TOKENS = 120.0, 15.0, 32
RATIO, FLOOR = 1.25, 0.05


# --- the reference client: raw asyncio streams, nothing shared with lmiflow.bench -------------


async def _raw_request(reader, writer, host: str, path: str, body: bytes):
    perf = time.perf_counter
    start = perf()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Accept: application/jsonlines\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        raise RuntimeError(f"HTTP {status}")
    first = last = None
    tokens = 0
    buf = b""
    while True:
        size = int((await reader.readline()).strip(), 16)
        if size == 0:
            await reader.readline()
            break
        data = await reader.readexactly(size + 2)
        t = perf()
        buf += data[:-2]
        *lines, buf = buf.split(b"\n")
        for line in lines:
            obj = json.loads(line)
            if obj.get("token"):
                tokens += 1
                if first is None and obj["token"].get("text"):
                    first = t
                last = t
    return start, first, last, tokens


async def _raw_level(url: str, concurrency: int, requests: int, warmup: int,
                     tokens: int = TOKENS) -> tuple[float, float, float]:
    """(p50 TTFT ms, p50 TPOT ms, seconds) of the measured requests."""
    parts = urlsplit(url)
    host, port, path = parts.hostname, parts.port, parts.path
    body = json.dumps({"inputs": "hello " * 16, "stream": True,
                       "parameters": {"max_new_tokens": tokens, "details": True}}).encode()
    results = []
    counter = iter(range(warmup + requests))

    async def worker():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in counter:
                r = await _raw_request(reader, writer, f"{host}:{port}", path, body)
                if i >= warmup:
                    results.append(r)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    secs = time.perf_counter() - t0
    ttft = [(f - s) * 1000 for s, f, _, _ in results]
    tpot = [(e - f) * 1000 / (n - 1) for _, f, e, n in results if n > 1]
    return statistics.median(ttft), statistics.median(tpot), secs


# --- the comparison ----------------------------------------------------------------------------


def _lmiflow(url: str, c: int, n: int, processes: int | None = None):
    cfg = LoadConfig(concurrency=[c], requests=n, warmup=c, max_new_tokens=TOKENS,
                     input_tokens=16, timeout_s=60, processes=processes)
    return bench_url(url, cfg).levels[0]


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _spread(xs: list[float]) -> str:
    return f"{min(xs) * 100:+.0f}..{max(xs) * 100:+.0f}"


def fidelity(levels: list[int], rounds: int, quick: bool) -> bool:
    rows, ok_all = [], True
    with serve_in_subprocess(ttft_ms=TTFT_MS, tpot_ms=TPOT_MS) as url:
        for c in levels:
            n = max(16 if quick else 32, (2 if quick else 4) * c)
            errs: dict[str, list[float]] = {"lt": [], "rt": [], "lp": [], "rp": []}
            saturated = []
            for r in range(rounds):
                order = ("raw", "lmiflow") if r % 2 == 0 else ("lmiflow", "raw")
                for who in order:
                    if who == "raw":
                        ttft, tpot, _ = asyncio.run(_raw_level(url, c, n, c))
                        errs["rt"].append(ttft / TTFT_MS - 1)
                        errs["rp"].append(tpot / TPOT_MS - 1)
                    else:
                        lv = _lmiflow(url, c, n)
                        errs["lt"].append(lv.ttft_ms.p50 / TTFT_MS - 1)
                        errs["lp"].append(lv.tpot_ms.p50 / TPOT_MS - 1)
                        saturated.append(lv.generator_saturated)
            med = {k: statistics.median(v) for k, v in errs.items()}
            ok_t = abs(med["lt"]) <= max(RATIO * abs(med["rt"]), FLOOR)
            ok_p = abs(med["lp"]) <= max(RATIO * abs(med["rp"]), FLOOR)
            ok_all &= ok_t and ok_p
            rows.append((c, n, med, errs, ok_t, ok_p, sum(saturated)))
    print(f"\nFidelity: synthetic endpoint TTFT {TTFT_MS:g} ms, TPOT {TPOT_MS:g} ms, {TOKENS} "
          f"tokens, lock-step waves, warm-up = concurrency; {rounds} rounds per level, "
          f"alternating clients. Error = p50 / truth - 1: median over rounds [range, %]. "
          f"Bound: |lmiflow| <= max({RATIO:g} x |raw|, {FLOOR:.0%}).")
    print(f"{'conc':>4} {'reqs':>4} | {'TTFT lmiflow':>20} {'TTFT raw':>20} {'ok':>3} | "
          f"{'TPOT lmiflow':>19} {'TPOT raw':>19} {'ok':>3} | gen.sat")
    for c, n, med, errs, ok_t, ok_p, sat in rows:
        cell = {k: f"{_pct(med[k])} [{_spread(errs[k])}]" for k in med}
        print(f"{c:>4} {n:>4} | {cell['lt']:>20} {cell['rt']:>20} {'yes' if ok_t else 'NO':>3}"
              f" | {cell['lp']:>19} {cell['rp']:>19} {'yes' if ok_p else 'NO':>3} | "
              f"{sat}/{rounds}")
    return ok_all


def capacity(quick: bool) -> None:
    """Closed loop at 64 against an endpoint that answers at once: how many token lines per
    second can the generator take? The endpoint shares this machine, so these are floors."""
    conc, n = 64, (100 if quick else 400)
    print(f"\nGenerator capacity: {conc} streams of {TOKENS} tokens against a zero-latency "
          f"endpoint on the same {os.cpu_count()}-core machine (lines/s; floors, the endpoint "
          "competes for the cores).")
    print(f"{'client':>20} {'lines/s':>9} {'CPU %':>6} {'lag p99 ms':>10} {'saturated':>9}")
    with serve_in_subprocess(ttft_ms=0, tpot_ms=0) as url:
        _, _, secs = asyncio.run(_raw_level(url, conc, n, 0))
        print(f"{'raw reference':>20} {n * TOKENS / secs:>9.0f} {'-':>6} {'-':>10} {'-':>9}")
        for procs in (1, 2):
            lv = _lmiflow(url, conc, n, processes=procs)
            g = lv.generator
            print(f"{f'lmiflow, {procs} process(es)':>20} {lv.output_tokens_per_s:>9.0f} "
                  f"{g.cpu_pct:>6.0f} {g.loop_lag_p99_ms:>10.1f} {lv.generator_saturated!s:>9}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--levels", default="1,16,48,64")
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
          "(other work on the machine delays the endpoint and both clients)")
    ok = fidelity([int(x) for x in a.levels.split(",")], a.rounds, a.quick)
    capacity(a.quick)
    print(f"\nfidelity: {'PASS' if ok else 'FAIL'} (p50 TTFT and TPOT error of lmiflow within "
          f"max({RATIO:g} x the reference client's, {FLOOR:.0%}) at every concurrency)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
