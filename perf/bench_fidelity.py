"""Benchmark fidelity: does `lmiflow bench` measure what the endpoint does, up to 64 streams?

A synthetic LMI endpoint (bench.synthetic, in its own process) sends the first token TTFT after
each request arrives and the next ones TPOT apart. For each concurrency level we measure p50
TTFT and p50 TPOT in the same run with lmiflow's load generator (its default client, aiohttp
when installed, and the httpx fallback; bench.metrics) and with a minimal reference client
written here on raw asyncio sockets with hand-parsed chunked HTTP and its own arithmetic
(shares no code with the generator). Target: the default client within 2 % of truth, with the
workers ramped up over one E2E; the lock-step worst case (no ramp-up) is shown too. Then the
highest request rate and token-line rate the generator sustains on this machine.

Run: .venv/bin/python perf/bench_fidelity.py [--quick]   (exit 1 when the ramped run misses 2 %)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmiflow.bench.loadgen import LoadConfig, bench_url, http_client_name
from lmiflow.bench.synthetic import serve_in_subprocess

TTFT_MS, TPOT_MS, TOKENS = 100.0, 20.0, 32
TOLERANCE = 0.02
DEFAULT_CLIENT = http_client_name("auto")  # what `lmiflow bench --url` uses here


# --- the reference client: raw sockets, nothing shared with bench/ ---------------------------


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
                     tokens: int = TOKENS, ramp_s: float = 0.0) -> tuple[float, float | None]:
    parts = urlsplit(url)
    host, port, path = parts.hostname, parts.port, parts.path
    body = json.dumps({"inputs": "hello " * 16, "stream": True,
                       "parameters": {"max_new_tokens": tokens, "details": True}}).encode()
    results = []
    counter = iter(range(warmup + requests))

    async def worker(k: int):
        reader, writer = await asyncio.open_connection(host, port)
        await asyncio.sleep(ramp_s * k / concurrency)
        try:
            for i in counter:
                r = await _raw_request(reader, writer, f"{host}:{port}", path, body)
                if i >= warmup:
                    results.append(r)
        finally:
            writer.close()

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    ttft = [(f - s) * 1000 for s, f, _, _ in results]
    tpot = [(e - f) * 1000 / (n - 1) for _, f, e, n in results if n > 1]
    return float(np.median(ttft)), float(np.median(tpot)) if tpot else None


# --- the run ---------------------------------------------------------------------------------


def _requests_for(c: int, quick: bool) -> int:
    return max(12 if quick else 20, (2 if quick else 4) * c)


def fidelity(levels: list[int], clients: list[str], quick: bool, ramp_s: float,
             title: str) -> bool:
    """Pass when every client's p50 TTFT and TPOT are within TOLERANCE of truth."""
    ok_all = True
    rows = []
    with serve_in_subprocess(ttft_ms=TTFT_MS, tpot_ms=TPOT_MS) as url:
        for c in levels:
            n = _requests_for(c, quick)
            raw_ttft, raw_tpot = asyncio.run(_raw_level(url, c, n, c, ramp_s=ramp_s))
            for client in clients:
                cfg = LoadConfig(concurrency=[c], requests=n, warmup=c, max_new_tokens=TOKENS,
                                 input_tokens=16, timeout_s=60, http_client=client,
                                 ramp_up_s=ramp_s)
                lv = bench_url(url, cfg).levels[0]
                ttft_r, tpot_r = lv.ttft_ms.p50 / TTFT_MS, lv.tpot_ms.p50 / TPOT_MS
                ok = abs(ttft_r - 1) <= TOLERANCE and abs(tpot_r - 1) <= TOLERANCE
                if client == DEFAULT_CLIENT:  # the httpx fallback is shown, not gated
                    ok_all &= ok
                g = lv.generator
                rows.append((client, c, n, lv.ttft_ms.p50, ttft_r, raw_ttft, raw_ttft / TTFT_MS,
                             lv.ttft_ms.p50 / raw_ttft, lv.tpot_ms.p50, tpot_r, raw_tpot,
                             raw_tpot / TPOT_MS, lv.tpot_ms.p50 / raw_tpot,
                             g.loop_lag_p99_ms, g.cpu_pct, lv.generator_saturated, ok))
    print(f"\nFidelity, {title}.\nSynthetic endpoint TTFT {TTFT_MS:g} ms, TPOT {TPOT_MS:g} "
          f"ms, {TOKENS} tokens, warm-up = concurrency. p50s in ms; ratio = measured / truth; "
          f"gen/raw = lmiflow's generator / the raw-socket reference client, same run. "
          f"Pass: within {TOLERANCE:.0%} of truth.")
    hdr = ("client", "conc", "reqs", "TTFT", "ratio", "raw TTFT", "ratio", "gen/raw", "TPOT",
           "ratio", "raw TPOT", "ratio", "gen/raw", "lag p99", "CPU %", "satur.", "pass")
    print(" ".join(f"{h:>8}" for h in hdr))
    for r in rows:
        cl, c, n, t, tr, rt, rtr, tx, p, pr, rp, rpr, px, lag, cpu, sat, ok = r
        verdict = ("PASS" if ok else "FAIL") if cl == DEFAULT_CLIENT else ("ok" if ok else "over")
        print(f"{cl:>8} {c:>8} {n:>8} {t:>8.2f} {tr:>8.4f} {rt:>8.2f} {rtr:>8.4f} {tx:>8.4f} "
              f"{p:>8.3f} {pr:>8.4f} {rp:>8.3f} {rpr:>8.4f} {px:>8.4f} {lag:>8.2f} "
              f"{cpu:>8.1f} {sat!s:>8} {verdict:>8}")
    return ok_all


def capacity(clients: list[str], quick: bool) -> None:
    """Closed loop against an endpoint with no latency: how fast can the generator go?"""
    print("\nGenerator capacity: closed loop at 64 against an endpoint that answers at once. "
          f"The endpoint shares this machine's {os.cpu_count()} cores, so these are lower "
          "bounds; raw = the reference client.")
    print(f"{'test':>18} {'client':>8} {'reqs':>6} {'req/s':>8} {'lines/s':>8} {'raw req/s':>9} "
          f"{'gen/raw':>8} {'CPU %':>6} {'lag p99':>8} {'saturated':>9}")
    conc = 64
    with serve_in_subprocess(ttft_ms=0, tpot_ms=0) as url:
        for name, tokens, n in (
            ("1-token requests", 1, 600 if quick else 3000),
            ("64-token streams", 64, 100 if quick else 500),
        ):
            raw_rps = _raw_rate(url, conc, n, tokens)
            for client in clients:
                cfg = LoadConfig(concurrency=[conc], requests=n, warmup=conc,
                                 max_new_tokens=tokens, input_tokens=16, timeout_s=60,
                                 http_client=client)
                lv = bench_url(url, cfg).levels[0]
                rps = lv.requests_per_min / 60
                g = lv.generator
                print(f"{name:>18} {client:>8} {n:>6} {rps:>8.0f} {rps * tokens:>8.0f} "
                      f"{raw_rps:>9.0f} {rps / raw_rps:>8.3f} {g.cpu_pct:>6.0f} "
                      f"{g.loop_lag_p99_ms:>8.1f} {lv.generator_saturated!s:>9}")


def _raw_rate(url: str, conc: int, n: int, tokens: int) -> float:
    t0 = time.perf_counter()
    asyncio.run(_raw_level(url, conc, n, 0, tokens))
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--levels", default="1,4,16,64")
    a = ap.parse_args()
    clients = [DEFAULT_CLIENT] + (["httpx"] if DEFAULT_CLIENT != "httpx" else [])
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
          "(other work on the machine shows up as event-loop lag)")
    levels = [int(x) for x in a.levels.split(",")]
    e2e_s = (TTFT_MS + (TOKENS - 1) * TPOT_MS) / 1000
    ok = fidelity(levels, clients, a.quick, e2e_s,
                  f"workers ramped up over one E2E ({e2e_s:.2f} s, --ramp-up)")
    burst_ok = fidelity([max(levels)], [DEFAULT_CLIENT], a.quick, 0.0,
                        "worst case: no ramp-up, every request in lock-step waves")
    capacity(clients, a.quick)
    print(f"\nfidelity (ramped): {'PASS' if ok else 'FAIL'}; lock-step worst case: "
          f"{'PASS' if burst_ok else 'FAIL'} (p50 TTFT and TPOT of the default client, "
          f"{DEFAULT_CLIENT}, within {TOLERANCE:.0%} of truth at every level; httpx rows "
          "are the fallback, shown as ok/over)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
