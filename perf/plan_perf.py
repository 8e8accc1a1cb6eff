"""Planner speed: one plan over the whole catalog (memory only, and with latency limits and
scale-out, where every option binary-searches the concurrency its prediction allows), a
1,000-scenario sweep, and the `lmiflow plan` command's wall time. Goals: < 50 ms per plan,
< 5 s per sweep, < 1 s per command."""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmiflow.sizing.catalog import load_catalog  # noqa: E402
from lmiflow.sizing.model_spec import parse_model_config, read_config_file  # noqa: E402
from lmiflow.sizing.planner import LatencyLimit, PlanRequest, plan  # noqa: E402


def main() -> None:
    models = {d.name: parse_model_config(read_config_file(d))
              for d in sorted((ROOT / "configs" / "models").iterdir()) if d.is_dir()}
    catalog = load_catalog()
    spec = models["llama-2-13b"]
    req = PlanRequest(dtype="fp16", max_input_tokens=3072, max_output_tokens=1024, concurrency=4)
    plan(spec, req, catalog)  # warm
    times = []
    for _ in range(50):
        t = time.perf_counter()
        p = plan(spec, req, catalog)
        times.append(time.perf_counter() - t)
    one = statistics.median(times) * 1000
    print(f"one plan over {len(catalog)} instance types ({len(p.options)} options): "
          f"median {one:.2f} ms (goal < 50 ms, ratio {one / 50:.2f})")

    gated = req.model_copy(update={"max_instance_count": 8, "latency_limits": [
        LatencyLimit(metric="ttft_ms", stat="p95", threshold=2000),
        LatencyLimit(metric="tpot_ms", threshold=40),
        LatencyLimit(metric="tpot_ms", threshold=30, concurrency=1)]})
    plan(spec, gated, catalog)
    times = []
    for _ in range(50):
        t = time.perf_counter()
        p = plan(spec, gated, catalog)
        times.append(time.perf_counter() - t)
    one = statistics.median(times) * 1000
    print(f"one plan with latency limits and scale-out to 8 instances ({len(p.options)} "
          f"options): median {one:.2f} ms (goal < 50 ms, ratio {one / 50:.2f})")

    contexts = [(512, 128), (2048, 512), (3072, 1024), (8000, 1000), (30000, 2000)]
    concurrencies = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
                     32768, 65536, 131072, 262144, 524288, 999999, 3, 5]
    scenarios = list(itertools.islice(itertools.cycle(
        itertools.product(models.values(), contexts, concurrencies)), 1000))
    t = time.perf_counter()
    for s, (i, o), c in scenarios:
        plan(s, PlanRequest(max_input_tokens=i, max_output_tokens=o, concurrency=c), catalog)
    sweep = time.perf_counter() - t
    print(f"sweep of {len(scenarios)} (model x context x concurrency) scenarios: {sweep:.2f} s "
          f"(goal < 5 s, ratio {sweep / 5:.2f}; {sweep / len(scenarios) * 1000:.2f} ms/plan)")

    cmd = [str(ROOT / ".venv" / "bin" / "lmiflow"), "plan", "--model",
           "configs/models/llama-2-13b", "--dtype", "fp16", "--max-input-tokens", "3072",
           "--max-output-tokens", "1024", "--concurrency", "4", "--json"]
    walls = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        walls.append(time.perf_counter() - t)
    wall = statistics.median(walls)
    print(f"`lmiflow plan` command wall time: median {wall:.3f} s of 5 (goal < 1 s, "
          f"ratio {wall:.2f})")
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, lmiflow.cli, lmiflow.commands.plan as p;"
         "import argparse; "
         "print(','.join(m for m in ('prefect','boto3','torch') if m in sys.modules))"],
        cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"heavy modules imported by the plan command path: {imported or 'none'}")


if __name__ == "__main__":
    main()
