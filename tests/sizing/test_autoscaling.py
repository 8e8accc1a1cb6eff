"""sizing.autoscaling: the per-copy target from the plan, with values worked out by hand."""

from __future__ import annotations

import pytest
from lmiflow.sizing.autoscaling import auto_target, ceiling_per_copy, copy_batch, scaling_plan


@pytest.mark.parametrize(("plan_max", "batch", "ceiling"), [
    (5, 4, 4),     # the batch binds: a fifth request would queue in the container
    (3, 8, 3),     # the latency limits bind
    (0, 4, 0),     # the plan holds nothing per copy
])
def test_ceiling_is_the_lower_of_the_plan_and_the_batch(plan_max, batch, ceiling):
    assert ceiling_per_copy(plan_max, batch) == ceiling


@pytest.mark.parametrize(("ceiling", "headroom", "target"), [
    (4, 20, 3),    # 4 x 0.8 = 3.2 -> 3
    (10, 25, 7),   # 7.5 -> 7
    (10, 30, 7),   # 7.0 exactly: not 6 from float rounding
    (5, 0, 5),     # no headroom: the ceiling itself
    (1, 20, 1),    # 0.8 -> 0, but a target of zero never scales in: 1
])
def test_auto_target_is_the_ceiling_less_headroom_rounded_down(ceiling, headroom, target):
    assert auto_target(ceiling, headroom) == target


def _plan(**kw):
    args = dict(min_instances=1, max_instances=4, target="auto", headroom_pct=None,
                scale_in_cooldown_s=600, scale_out_cooldown_s=60, plan_max_per_copy=12,
                batch_per_copy=10, copies_per_instance=4, initial_instances=2)
    return scaling_plan(**{**args, **kw})


def test_auto_uses_the_default_headroom_and_counts_every_copy_of_an_instance():
    p = _plan()
    # ceiling min(12, 10) = 10; default headroom 20 % -> 8 per copy; 4 copies -> 32
    assert (p.ceiling_per_copy, p.target_per_copy, p.target_per_instance) == (10, 8, 32.0)
    assert (p.source, p.headroom_pct) == ("auto", 20.0)
    assert "10 less 20 % headroom = 8 per copy" in " ".join(p.why)


def test_a_configured_target_is_taken_as_is_without_headroom():
    p = _plan(target=6)
    assert (p.target_per_copy, p.target_per_instance, p.source, p.headroom_pct) == (
        6, 24.0, "config", None)


def test_the_range_and_cooldowns_pass_through():
    p = _plan(min_instances=2, max_instances=9, scale_in_cooldown_s=30, scale_out_cooldown_s=5)
    assert (p.min_instances, p.max_instances, p.initial_instances) == (2, 9, 2)
    assert (p.scale_in_cooldown_s, p.scale_out_cooldown_s) == (30, 5)


@pytest.mark.parametrize(("concurrency", "copies", "batch"), [
    (8, 1, 8),     # one inference-component copy serves the whole workload
    (8, 2, 4),
    (8, 3, 3),     # rounded up: three copies of 3 hold 8
    (1, 4, 1),     # never below one sequence
])
def test_a_copy_runs_its_share_of_the_workload(concurrency, copies, batch):
    assert copy_batch(concurrency, copies) == batch
