"""CPU threads of the local model server: the demo model's TTFT and TPOT p50 with torch's
default (every core) and with lmiflow's (half the cores, at least one), alternating rounds of
`lmiflow bench` against each so both see the same background load. Prints the figures per
round and the spread (max/min of the rounds' TTFT p50) per setting.

Run: .venv/bin/python perf/local_threads.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH = ["--concurrency", "1,4", "--requests", "8", "--warmup", "2", "--input-tokens", "32",
         "--max-new-tokens", "16", "--json"]


def start(model_dir: Path, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LMIFLOW_CPU_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "lmiflow.serving.server", "--model-dir",
                             str(model_dir), "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ping", timeout=2).status_code == 200:
                return proc, url + "/invocations"
        except httpx.HTTPError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("server did not start")


def bench(url: str) -> dict[int, tuple[float, float]]:
    out = subprocess.run([sys.executable, "-m", "lmiflow", "bench", "--url", url, *BENCH],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {lv["concurrency"]: (lv["ttft_ms"]["p50"], lv["tpot_ms"]["p50"])
            for lv in json.loads(out)["levels"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from lmiflow.serving.demo_model import ensure_demo_model
    from lmiflow.serving.engine import cpu_threads

    cores = len(os.sched_getaffinity(0))
    settings = {f"torch default ({cores})": cores, f"lmiflow ({cpu_threads()})": cpu_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        model = ensure_demo_model(Path(tmp) / "demo")
        (model / "serving.properties").write_text(
            f"option.model_id={model}\noption.max_rolling_batch_size=4\n"
            "option.max_model_len=288\n")
        servers = {name: start(model, n) for name, n in settings.items()}
        try:
            rows: dict[str, list[dict[int, tuple[float, float]]]] = {n: [] for n in settings}
            for r in range(args.rounds):
                for name, (_, url) in servers.items():
                    got = bench(url)
                    rows[name].append(got)
                    print(f"round {r + 1} {name:>20}: " + "  ".join(
                        f"c={c} TTFT p50 {t:6.1f} ms TPOT p50 {p:6.1f} ms"
                        for c, (t, p) in sorted(got.items())))
        finally:
            for proc, _ in servers.values():
                os.killpg(proc.pid, signal.SIGTERM)
    for name, runs in rows.items():
        ttft = [run[1][0] for run in runs]
        print(f"{name:>20}: c=1 TTFT p50 median {sorted(ttft)[len(ttft) // 2]:.1f} ms, "
              f"spread max/min {max(ttft) / max(min(ttft), 1e-9):.1f}x")


if __name__ == "__main__":
    main()
