"""Autoscaling numbers from the plan: how many concurrent requests one model copy should carry
before the endpoint adds an instance, and the instance range to scale in.

Why the plan decides the target: target tracking keeps the average concurrent requests per
instance at a target value, so the target is a capacity claim. The planner already knows two
capacities per copy: the most requests its memory and the latency limits allow
(Option.max_concurrency_per_copy) and the batch the copy is configured to run at once
(Option.concurrency_per_copy, rendered as option.max_rolling_batch_size). A request beyond the
batch waits in the container's queue, outside what the latency model predicted, so a copy
holds the lower of the two without queueing. `auto` tracks that ceiling less a headroom: target
tracking reacts after the metric crosses the target (seconds to minutes for a new instance),
and the headroom is what absorbs the burst meanwhile.

Pure: numbers in, numbers out; the config checks that name fields live in lmiflow.pipeline.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field

DEFAULT_HEADROOM_PCT = 20.0


class ScalingPlan(BaseModel):
    """What the endpoint scales between and on, and why (report.json `autoscaling`)."""

    min_instances: int = Field(ge=0)
    max_instances: int = Field(ge=1)
    initial_instances: int = Field(ge=1, description="What the endpoint starts with: the "
                                   "plan's instance count.")
    copies_per_instance: int = Field(ge=1, description="Model copies on one instance (GPUs / "
                                     "tp): one container holds them all.")
    target_per_copy: int = Field(ge=1, description="Concurrent requests per model copy the "
                                 "policy keeps the average at.")
    target_per_instance: float = Field(gt=0, description="target_per_copy x copies_per_"
                                       "instance: the policy's TargetValue, since the metric "
                                       "counts requests per container (instance).")
    ceiling_per_copy: int = Field(ge=1, description="The most one copy holds without queueing "
                                  "within memory and the latency limits.")
    plan_max_per_copy: int = Field(description="Option.max_concurrency_per_copy.")
    batch_per_copy: int = Field(description="Option.concurrency_per_copy (the copy's batch).")
    source: Literal["auto", "config"]
    headroom_pct: float | None = Field(default=None, description="auto only.")
    scale_in_cooldown_s: int
    scale_out_cooldown_s: int
    why: list[str] = Field(default_factory=list)


def ceiling_per_copy(plan_max_per_copy: int, batch_per_copy: int) -> int:
    """The most concurrent requests one copy serves without queueing, within the plan's memory
    and latency limits (0 when the plan holds none)."""
    return max(0, min(plan_max_per_copy, batch_per_copy))


def copy_batch(concurrency: int, copies: int) -> int:
    """The batch one copy runs (option.max_rolling_batch_size) so that `copies` copies serve
    `concurrency` requests at once without queueing: each copy is one DJL worker with its own
    engine, so the batch is per copy, whatever else shares the instance."""
    return max(1, math.ceil(concurrency / max(1, copies)))


def auto_target(ceiling: int, headroom_pct: float) -> int:
    """The ceiling less headroom_pct percent, rounded down, and at least one request (a target
    of zero would scale out forever)."""
    return max(1, math.floor(ceiling * (1 - headroom_pct / 100) + 1e-9))


def scaling_plan(*, min_instances: int, max_instances: int, target: int | Literal["auto"],
                 headroom_pct: float | None, scale_in_cooldown_s: int,
                 scale_out_cooldown_s: int, plan_max_per_copy: int, batch_per_copy: int,
                 copies_per_instance: int, initial_instances: int) -> ScalingPlan:
    """The plan for one endpoint. Limits (target above the ceiling, counts out of range) are
    the caller's to check with field names; this only computes."""
    ceiling = ceiling_per_copy(plan_max_per_copy, batch_per_copy)
    held = (f"a copy holds {plan_max_per_copy} concurrent request(s) within memory and any "
            f"latency limits and runs a batch of {batch_per_copy} "
            "(option.max_rolling_batch_size; more would queue)")
    if target == "auto":
        headroom = DEFAULT_HEADROOM_PCT if headroom_pct is None else headroom_pct
        per_copy = auto_target(ceiling, headroom)
        why = [f"{held}: ceiling {ceiling} per copy",
               f"target auto: {ceiling} less {headroom:g} % headroom = {per_copy} per copy "
               "(the headroom absorbs a burst while a new instance starts)"]
        source: Literal["auto", "config"] = "auto"
    else:
        headroom, per_copy, source = None, int(target), "config"
        why = [f"{held}: ceiling {ceiling} per copy",
               f"target {per_copy} per copy set by autoscaling.target"]
    per_instance = per_copy * copies_per_instance
    why.append(f"{copies_per_instance} cop{'y' if copies_per_instance == 1 else 'ies'} per "
               f"instance: target {per_instance:g} concurrent requests per instance")
    why.append(f"between {min_instances} and {max_instances} instance(s), starting at "
               f"{initial_instances} (the plan's count)")
    return ScalingPlan(
        min_instances=min_instances, max_instances=max_instances,
        initial_instances=initial_instances, copies_per_instance=copies_per_instance,
        target_per_copy=per_copy, target_per_instance=float(per_instance),
        ceiling_per_copy=max(ceiling, 1), plan_max_per_copy=plan_max_per_copy,
        batch_per_copy=batch_per_copy, source=source, headroom_pct=headroom,
        scale_in_cooldown_s=scale_in_cooldown_s, scale_out_cooldown_s=scale_out_cooldown_s,
        why=why)
