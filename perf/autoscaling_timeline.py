"""The local target's autoscaler under a load ramp, as a timeline: seconds since the ramp
started, requests in flight, serving copies (and copies starting), desired copies, and what
the scaler did. Policy: 1..2 copies, target 2 concurrent requests per copy, scale-out
cooldown 0 s, scale-in cooldown 5 s, a tick every 0.25 s.

Ramp: 1 streaming client for 5 s (at target: nothing happens), 4 clients until the second
copy has served for 5 s (twice the target: a copy is added), then none (the copy drains and
stops after the scale-in cooldown).

Run: .venv/bin/python perf/autoscaling_timeline.py   (prints the timeline; exit 1 when the
copy is never added or never removed)
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmiflow.sizing.autoscaling import scaling_plan  # noqa: E402

from lmiflow.serving.demo_model import ensure_demo_model  # noqa: E402
from lmiflow.targets.base import EndpointVariant  # noqa: E402
from lmiflow.targets.local import LocalTarget  # noqa: E402
from lmiflow.targets.local_scaler import read_timeline  # noqa: E402

PAYLOAD = {"inputs": "hello " * 8, "parameters": {"max_new_tokens": 200}}


def clients(target: LocalTarget, n: int, stop: threading.Event) -> list[threading.Thread]:
    def loop():
        while not stop.is_set():
            for _ in target.invoke_stream("ep", PAYLOAD):
                pass

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def phase(target: LocalTarget, n: int, until, limit_s: float) -> bool:
    stop = threading.Event()
    threads = clients(target, n, stop)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and not until():
        time.sleep(0.25)
    stop.set()
    for t in threads:
        t.join(60)
    return bool(until())


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        weights = ensure_demo_model(Path(tmp) / "demo-model")
        target = LocalTarget(Path(tmp) / "state", scaler_tick_s=0.25)
        props = (f"option.model_id={weights}\noption.max_rolling_batch_size=4\n"
                 "option.max_model_len=256\n")
        target.create_model("m", target.stage("m", {"serving.properties": props}), None, {},
                            {})
        target.create_endpoint_config("ec", "m", EndpointVariant(instance_type="local"), {})
        plan = scaling_plan(min_instances=1, max_instances=2, target=2, headroom_pct=None,
                            scale_in_cooldown_s=5, scale_out_cooldown_s=0, plan_max_per_copy=4,
                            batch_per_copy=4, copies_per_instance=1, initial_instances=1)
        try:
            target.create_endpoint("ep", "ec", {})
            target.wait("ep", 300)
            target.apply_autoscaling("ep", plan)
            t0 = time.time()
            marks = {"ramp": t0}
            phase(target, 1, lambda: time.time() - t0 > 5, 10)
            marks["4 clients"] = time.time()
            served: dict[str, float] = {}

            def copy_served_5s() -> bool:
                copies = target._read()["endpoints"]["ep"].get("copies", [])
                if any(c["status"] == "InService" for c in copies):
                    served.setdefault("since", time.time())
                return "since" in served and time.time() - served["since"] > 5

            added = phase(target, 4, copy_served_5s, 300)
            marks["no clients"] = time.time()
            gone = phase(target, 0, lambda: not target._read()["endpoints"]["ep"].get("copies")
                         and read_timeline(target.state_dir, "ep")[-1]["copies"] == 1, 120)
            timeline = read_timeline(target.state_dir, "ep")
        finally:
            target.delete_endpoint("ep")

    print("   t s  in flight  copies  starting  desired  scaler")
    last = None
    for line in timeline:
        if line["t"] < t0:
            continue
        for name, at in list(marks.items()):
            if line["t"] >= at:
                print(f"{at - t0:6.1f}  -- {name}")
                del marks[name]
        key = (line["copies"], line["starting"], line["desired"], bool(line["actions"]))
        if key == last and not line["actions"]:
            continue
        last = key
        print(f"{line['t'] - t0:6.1f}  {line['in_flight']:9d}  {line['copies']:6d}  "
              f"{line['starting']:8d}  {line['desired']:7d}  {'; '.join(line['actions'])}"
              [:80].rstrip())
    print(f"copy added: {'yes' if added else 'NO'}; removed after: {'yes' if gone else 'NO'}")
    return 0 if added and gone else 1


if __name__ == "__main__":
    raise SystemExit(main())
