"""What a SageMaker blue/green promotion needs from the fleet, checked before anything exists.

Traffic shifting (SageMaker Developer Guide, deployment-guardrails-blue-green-canary.html and
-linear.html; the service model's TrafficRoutingConfig): a CANARY step may take at most half
of the new fleet, a LINEAR step 10-50 % of it, and a step is whole instances, so a percentage
of a small fleet can be less than one instance (10 % of 1), which SageMaker cannot run.

Fleets: a run holds the candidate endpoint (the new config's instances) while production (the
blue fleet) serves; the blue/green update then starts a green fleet of the new config next to
blue. lmiflow deletes the candidate once its benchmark is done and before the update starts, so
at most two fleets exist at any time: the peak is the candidate's instances plus production's.
Each instance type has a per-account quota, "ml.<type> for endpoint usage" (Service Quotas,
service code sagemaker), and p4d/p5 accounts often start with 0-2.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

QUOTA_NAME = "{instance_type} for endpoint usage"
QUOTA_SERVICE_CODE = "sagemaker"
CANARY_MAX_PCT = 50
LINEAR_MIN_PCT, LINEAR_MAX_PCT = 10, 50


def traffic_shift_error(strategy: str, canary_size_pct: int, linear_step_pct: int,
                        instance_count: int) -> tuple[str, str] | None:
    """(config field, reason with the smallest valid setting) when SageMaker cannot shift
    traffic this way over `instance_count` instances; None when it can."""
    if strategy == "ALL_AT_ONCE":
        return None
    n = instance_count
    if strategy == "CANARY":
        if n < 2:
            return ("promotion.strategy",
                    f"CANARY on {n} instance: a canary is at least 1 instance and at most half "
                    "the fleet, so it needs instance.count 2 or more (with canary_size_pct "
                    "50); or use ALL_AT_ONCE")
        smallest = math.ceil(100 / n)
        if canary_size_pct < smallest:
            return ("promotion.canary_size_pct",
                    f"{canary_size_pct} % of {n} instances is less than one instance; the "
                    f"smallest canary on {n} instances is {smallest} %")
        return None
    if strategy == "LINEAR":
        if n < 2:
            return ("promotion.strategy",
                    f"LINEAR on {n} instance: a step is at least 1 instance and at most half "
                    "the fleet, so it needs instance.count 2 or more (with linear_step_pct "
                    "50); or use ALL_AT_ONCE")
        smallest = max(LINEAR_MIN_PCT, math.ceil(100 / n))
        if linear_step_pct < smallest:
            return ("promotion.linear_step_pct",
                    f"{linear_step_pct} % of {n} instances is less than one instance; the "
                    f"smallest step on {n} instances is {smallest} %")
        return None
    return ("promotion.strategy", f"{strategy!r}: ALL_AT_ONCE, CANARY or LINEAR")


class FleetPeak(BaseModel):
    """The most instances of each type this run holds at once, and what that assumes."""

    instances: dict[str, int] = Field(description="instance type -> instances at the peak")
    assumption: str
    quota_names: dict[str, str] = Field(description="instance type -> Service Quotas name")


def fleet_peak(instance_type: str, count: int,
               production: dict[str, int] | None = None) -> FleetPeak:
    """Peak instances per type. Both two-fleet phases hold the new config's `count` instances
    (first as the candidate, then as green) next to production's, so the peak is their sum.
    `production` is production's instances per type (from DescribeEndpoint); None at plan time,
    when production is assumed to have the candidate's shape (a redeploy), {} when there is no
    production yet (then production is created after the candidate is gone: one fleet)."""
    if production is None:
        prod = {instance_type: count}
        assumption = "a redeploy: production has the same instances"
    else:
        prod = dict(production)
        assumption = ("production as described now" if prod
                      else "no production endpoint yet: the candidate, then production")
    peak = dict(prod)
    peak[instance_type] = peak.get(instance_type, 0) + count
    return FleetPeak(instances=dict(sorted(peak.items())), assumption=assumption,
                     quota_names={t: QUOTA_NAME.format(instance_type=t) for t in sorted(peak)})


def quota_error(peak: FleetPeak, quotas: dict[str, float | None]) -> str | None:
    """Why the peak does not fit the account's quotas (None when it fits, or when a quota is
    unknown: the run then says it could not check)."""
    over = []
    for t, n in peak.instances.items():
        q = quotas.get(t)
        if q is not None and n > q:
            over.append(f"{n} x {t} at the peak but the quota '{peak.quota_names[t]}' is "
                        f"{q:g}")
    if not over:
        return None
    return ("; ".join(over) + f" ({peak.assumption}); request a quota increase (Service Quotas, "
            "service sagemaker) or lower instance.count")
