"""The demo flow's wall time and Prefect's share of it (flow wall time minus the steps' own
time), cold (first run in a process: the temporary API server starts) and warm."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="lmiflow-flow-perf-"))
    os.environ["LMIFLOW_STATE_DIR"] = str(tmp / "state")
    os.environ["PREFECT_HOME"] = str(tmp / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from lmiflow.serving.demo_model import build_demo_model

    model = build_demo_model(tmp / "demo-model")
    from lmiflow.flows.deploy import deploy_llm, teardown_llm

    from lmiflow.spec import load_spec

    spec = load_spec(ROOT / "configs" / "local-demo.yaml",
                     {"model.id": str(model), "name": "perf-demo"})
    rows = []
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        state = deploy_llm(spec, report_dir=str(tmp / label), return_state=True)
        wall = time.perf_counter() - t0
        report = json.loads((tmp / label / "report.json").read_text())
        steps = sum(s["seconds"] for s in report["steps"])
        rows.append((label, report["status"], wall, steps))
        if not state.is_completed():
            print(f"{label}: run not promoted: {report['error']}")
    teardown_llm(spec)
    print(f"{'run':<5} {'status':<9} {'wall s':>8} {'steps s':>8} {'prefect s':>10} {'share':>6}")
    for label, status, wall, steps in rows:
        print(f"{label:<5} {status:<9} {wall:8.2f} {steps:8.2f} {wall - steps:10.2f} "
              f"{(wall - steps) / wall:6.1%}")
    print("(cold includes starting Prefect's temporary API server; steps include model load "
          "and the benchmark)")


if __name__ == "__main__":
    main()
