"""A real load ramp against the local target: the scaler adds a copy (a second server
process) when requests in flight pass the target, routing sends it requests, and the copy is
removed once the load is gone and the scale-in cooldown has passed. Waits are bounded; no
timing is asserted (perf/autoscaling_timeline.py prints the timeline with its times)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from lmiflow.sizing.autoscaling import scaling_plan

from lmiflow.targets.base import EndpointVariant
from lmiflow.targets.local import LocalTarget
from lmiflow.targets.local_scaler import read_timeline
from lmiflow.targets.processes import process_alive

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from tests.session_files import session_demo_model

    return session_demo_model(tmp_path_factory)


def _until(what: str, check, limit_s: float):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {limit_s:.0f} s: {what}")


def ramp(target: LocalTarget, endpoint: str, workers: int, stop: threading.Event,
         max_new_tokens: int = 200) -> list[threading.Thread]:
    """`workers` closed loops of streamed requests until stop is set."""
    payload = {"inputs": "hello " * 8, "parameters": {"max_new_tokens": max_new_tokens}}

    def loop():
        while not stop.is_set():
            for _ in target.invoke_stream(endpoint, payload):
                pass

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    return threads


def test_a_load_ramp_adds_a_copy_and_removes_it_after(tmp_path: Path, weights: Path) -> None:
    target = LocalTarget(tmp_path / "state", scaler_tick_s=0.25)
    props = (f"option.model_id={weights}\noption.max_rolling_batch_size=4\n"
             "option.max_model_len=256\n")
    target.create_model("m", target.stage("m", {"serving.properties": props}), None, {}, {})
    target.create_endpoint_config("ec", "m", EndpointVariant(instance_type="local"), {})
    # a copy's batch is 4 and the plan holds 4: target 2 per copy (set), 1..2 copies
    plan = scaling_plan(min_instances=1, max_instances=2, target=2, headroom_pct=None,
                        scale_in_cooldown_s=3, scale_out_cooldown_s=0, plan_max_per_copy=4,
                        batch_per_copy=4, copies_per_instance=1, initial_instances=1)
    stop = threading.Event()
    try:
        target.create_endpoint("ep", "ec", {})
        assert target.wait("ep", 180).status == "InService"
        target.apply_autoscaling("ep", plan)
        target.apply_autoscaling("ep", plan)  # again: the same scaler, the policy updated
        scaler = target._read()["endpoints"]["ep"]["scaler"]

        threads = ramp(target, "ep", workers=4, stop=stop)  # 4 in flight on 1 copy: 2x target

        def copy_in_service():
            copies = target._read()["endpoints"]["ep"].get("copies", [])
            return [c for c in copies if c["status"] == "InService"]

        (copy,) = _until("a second copy InService", copy_in_service, 240)
        # routing spreads the load: the new copy answers requests too
        _until("the copy serves requests", lambda: httpx.get(
            f"http://127.0.0.1:{copy['port']}/debug/stats").json()["requests_total"] > 0, 60)

        stop.set()
        for t in threads:
            t.join(60)
        _until("the copy removed", lambda: not target._read()["endpoints"]["ep"].get("copies"),
               120)
        _until("its process stopped", lambda: not process_alive(copy), 30)
        assert target.describe("ep").status == "InService"  # the endpoint's own copy serves

        _until("a tick on one copy", lambda: read_timeline(target.state_dir, "ep")[-1][
            "copies"] == 1, 30)
        timeline = read_timeline(target.state_dir, "ep")
        acted = [(line["copies"], a) for line in timeline for a in line["actions"]]
        out = next(i for i, (_, a) in enumerate(acted) if a.startswith("scale out"))
        into = next(i for i, (_, a) in enumerate(acted) if a.startswith("scale in"))
        assert out < into
        first_out = next(line for line in timeline if any(
            a.startswith("scale out") for a in line["actions"]))
        assert first_out["in_flight"] > plan.target_per_copy * first_out["copies"]
        assert max(line["copies"] for line in timeline) == 2 == plan.max_instances

        assert target.remove_autoscaling("ep") is True
        _until("the scaler stopped", lambda: not process_alive(scaler), 30)
        assert target.remove_autoscaling("ep") is False
    finally:
        stop.set()
        target.delete_endpoint("ep")
