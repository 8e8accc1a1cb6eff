"""A Failed production endpoint (it serves nothing and takes no update): detected before
anything is created, replaced only when the config allows it, and the regression check set
aside while production is down."""

from __future__ import annotations

import pytest

from lmiflow import lifecycle
from lmiflow.bench.metrics import BenchResult, LatencyStats, LevelResult
from lmiflow.errors import UserInputError
from tests.core.memory_target import MemoryTarget
from tests.core.test_lifecycle import NEW, OLD, SPEC

REPLACE = SPEC.model_copy(update={"promotion": SPEC.promotion.model_copy(
    update={"replace_failed": True})})
REGRESSION = SPEC.model_copy(update={"regression": SPEC.regression.model_copy(
    update={"max_regression_pct": 10})})


def failed_production() -> MemoryTarget:
    t = MemoryTarget()
    t.deployed("prod", OLD.endpoint_config, OLD.model)
    t.endpoints["prod"] = t.endpoints["prod"].model_copy(
        update={"status": "Failed", "failure_reason": "server process 42 exited"})
    t.deployed(NEW.endpoint, NEW.endpoint_config, NEW.model)
    return t


def test_a_failed_production_stops_the_run_before_anything_is_created():
    t = failed_production()
    before = t.list_resources("prod")
    with pytest.raises(UserInputError) as exc:
        lifecycle.check_production(t, SPEC)
    assert exc.value.field == "promotion.replace_failed"
    assert "server process 42 exited" in exc.value.reason and "--replace-failed" in exc.value.reason
    assert t.list_resources("prod") == before


def test_a_healthy_or_missing_production_passes_the_check():
    t = MemoryTarget()
    assert lifecycle.check_production(t, SPEC) is None
    t.deployed("prod", OLD.endpoint_config, OLD.model)
    assert lifecycle.check_production(t, SPEC).status == "InService"


def test_replacing_a_failed_production():
    t = failed_production()
    assert lifecycle.check_production(t, REPLACE).status == "Failed"
    result = lifecycle.promote(t, REPLACE, NEW, {})
    assert result.action == "replaced the Failed production"
    assert result.previous_config == OLD.endpoint_config
    assert t.describe("prod").status == "InService"
    assert t.describe("prod").config_name == NEW.endpoint_config
    assert t.updates == []  # a Failed endpoint is never updated, it is recreated
    # what the Failed production ran, and the candidate endpoint, are gone
    assert t.list_resources("prod") == {"models": [NEW.model],
                                        "endpoint_configs": [NEW.endpoint_config],
                                        "endpoints": ["prod"]}


def _bench(ttft_p50: float) -> BenchResult:
    stats = LatencyStats(mean=ttft_p50, p50=ttft_p50, p90=ttft_p50, p95=ttft_p50,
                         p99=ttft_p50, n=20)
    return BenchResult(levels=[LevelResult(concurrency=1, requests=20, ttft_ms=stats,
                                           tpot_ms=stats, output_tokens_per_s=100.0)])


def test_regression_is_not_enforced_while_production_is_down():
    baseline, worse = _bench(100), _bench(300)  # 200 % slower than production was
    t = failed_production()
    verdict = lifecycle.gate(t, REGRESSION, worse, baseline)
    assert verdict.passed and any("not enforced" in n for n in verdict.notes)
    t.endpoints["prod"] = t.endpoints["prod"].model_copy(update={"status": "InService"})
    verdict = lifecycle.gate(t, REGRESSION, worse, baseline)
    assert not verdict.passed  # the same candidate against a healthy production
    assert not any("not enforced" in n for n in verdict.notes)


def test_make_demo_replaces_its_own_failed_production():
    """After a reboot the demo's local production is Failed; `make` cannot pass
    --replace-failed, so the demo's own recipe does (and nothing else does)."""
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(["make", "-n", "demo"], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    [deploy] = [ln for ln in out.splitlines() if " -m lmiflow deploy " in ln]
    assert deploy.split()[-1] == "--replace-failed"
    plain = subprocess.run(["make", "-n", "demo", "DEMO_FLAGS="], cwd=root,
                           capture_output=True, text=True, check=True).stdout
    assert "--replace-failed" not in plain
