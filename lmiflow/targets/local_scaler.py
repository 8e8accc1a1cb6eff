"""The local target's autoscaler: model copies as server processes, added and removed by the
same target-tracking rule SageMaker's Application Auto Scaling applies to instances, so the
flow's autoscale step runs for real on this machine.

One scaler process per endpoint (`python -m lmiflow.targets.local_scaler`), started by
LocalTarget.apply_autoscaling and outliving the CLI like the servers do. Each tick it reads
every serving copy's in-flight requests (GET /debug/stats: requests in the server, queued
ones included, like ConcurrentRequestsPerModel), decides, and records a timeline line when
anything changed (autoscaling/<endpoint>.jsonl in the state directory). A copy is one
process here, so the policy's "instances" count processes and the target is per copy.

The rule (decide): desired = ceil(requests in flight / target), within min..max. Scale out to
desired at once when it is above the current count and scale_out_cooldown_s has passed since
the last scale-out. Scale in only after scale_in_cooldown_s without any scaling, and only to
the highest desired count seen over that whole window: a short lull removes nothing (target
tracking scales in on a sustained low, out on the first high). A copy that is removed first
stops getting requests (draining), then stops when its last request is done.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmiflow.errors import StateError
from lmiflow.targets.local import LocalTarget, timeline_path

TICK_S = 0.5


@dataclass
class Policy:
    """What the scaler needs of a ScalingPlan (the registry keeps the plan as JSON)."""

    min_copies: int
    max_copies: int
    target_per_copy: float
    scale_in_cooldown_s: float
    scale_out_cooldown_s: float

    @classmethod
    def from_plan(cls, plan: dict[str, Any]) -> Policy:
        return cls(min_copies=max(1, plan["min_instances"]), max_copies=plan["max_instances"],
                   target_per_copy=plan["target_per_instance"],
                   scale_in_cooldown_s=plan["scale_in_cooldown_s"],
                   scale_out_cooldown_s=plan["scale_out_cooldown_s"])


@dataclass
class ScalerState:
    started: float
    last_out: float = -math.inf
    last_in: float = -math.inf
    wanted: deque[tuple[float, int]] = field(default_factory=deque)


def desired(in_flight: float, policy: Policy) -> int:
    """Target tracking: the copies that bring requests per copy down to the target."""
    want = math.ceil(in_flight / policy.target_per_copy - 1e-9)
    return min(policy.max_copies, max(policy.min_copies, want))


def decide(state: ScalerState, now: float, in_flight: float, current: int, policy: Policy
           ) -> int:
    """The copy count to have now (see the module docstring); updates state."""
    want = desired(in_flight, policy)
    while state.wanted and state.wanted[0][0] <= now - policy.scale_in_cooldown_s:
        state.wanted.popleft()
    state.wanted.append((now, want))
    if want > current:
        if now - state.last_out >= policy.scale_out_cooldown_s:
            state.last_out = now
            return want
        return current
    if current > policy.max_copies:
        state.last_in = now
        return policy.max_copies
    quiet_since = max(state.started, state.last_out, state.last_in)
    if want < current and now - quiet_since >= policy.scale_in_cooldown_s:
        peak = max(w for _, w in state.wanted)
        if peak < current:
            state.last_in = now
            return peak
    return current


def read_timeline(state_dir: Path, endpoint: str) -> list[dict[str, Any]]:
    path = timeline_path(state_dir, endpoint)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _in_flight(port: int) -> int | None:
    import httpx

    try:
        return int(httpx.get(f"http://127.0.0.1:{port}/debug/stats", timeout=2.0)
                   .json()["in_flight"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def run(state_dir: Path, endpoint: str, tick_s: float = TICK_S) -> None:
    """The scaler's loop; returns when the endpoint is gone or no longer scales."""
    target = LocalTarget(state_dir)
    state = ScalerState(started=time.time())
    path = timeline_path(state_dir, endpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    last: tuple | None = None
    while True:
        try:
            rec = target._read()["endpoints"].get(endpoint)
        except StateError as exc:  # a registry being repaired by hand: look again later
            print(f"registry unreadable: {exc}", file=sys.stderr, flush=True)
            time.sleep(tick_s)
            continue
        if rec is None or not rec.get("autoscaling") or rec["status"] == "Failed":
            return
        try:
            last = _tick(target, endpoint, rec, state, path, last)
        except Exception as exc:  # one bad tick (a copy that would not start) stops nothing
            print(f"tick failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        time.sleep(tick_s)


def _tick(target: Any, endpoint: str, rec: dict, state: ScalerState, path: Path,
          last: tuple | None) -> tuple | None:
    """Measure, decide, act and record once; returns what was last recorded."""
    policy = Policy.from_plan(rec["autoscaling"])
    serving = target.serving_procs(rec)
    counts = [_in_flight(p["port"]) for p in serving]
    in_flight = sum(c for c in counts if c is not None)
    starting = [c for c in rec.get("copies", []) if c["status"] == "Creating"
                and c["config_name"] == rec["config_name"]]
    current = len(serving) + len(starting)
    now = time.time()
    want = decide(state, now, in_flight, current, policy)
    draining = [c for c in rec.get("copies", []) if c["status"] == "Draining"]
    measured = {p["port"]: n for p, n in zip(serving, counts, strict=True)}
    measured |= {c["port"]: _in_flight(c["port"]) for c in draining}
    actions = target.scale_copies(endpoint, want, measured)
    seen = (in_flight, len(serving), len(starting), want)
    if seen != last or actions:  # a line per change: an idle endpoint's file stays small
        last = seen
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"t": round(now, 3), "in_flight": in_flight,
                                "copies": len(serving), "starting": len(starting),
                                "desired": want, "target_per_copy": policy.target_per_copy,
                                "actions": actions}) + "\n")
    return last


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lmiflow.targets.local_scaler")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--tick-s", type=float, default=TICK_S)
    args = ap.parse_args(argv)
    run(Path(args.state_dir), args.endpoint, args.tick_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
