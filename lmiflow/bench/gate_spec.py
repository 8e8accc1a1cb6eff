"""The typed form of a gate, shared by the config (validation) and bench.gates (evaluation)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmiflow.errors import UserInputError

# Latency metrics carry percentiles; the others are one number per level. `goodput` is
# requests/s meeting every latency gate of the same list, each request by its own value
# (bench.metrics): with no latency gate there is no goodput, and a goodput gate fails.
LATENCY_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
SCALAR_METRICS = (
    "output_tokens_per_s",
    "requests_per_min",
    "error_rate",
    "goodput",
    "usd_per_1m_output_tokens",
)
Metric = Literal[
    "ttft_ms",
    "tpot_ms",
    "itl_ms",
    "e2e_ms",
    "output_tokens_per_s",
    "requests_per_min",
    "error_rate",
    "goodput",
    "usd_per_1m_output_tokens",
]
Stat = Literal["mean", "p50", "p90", "p95", "p99", "value"]
Op = Literal["<", "<=", ">", ">="]


class GateSpec(BaseModel):
    """One service-level check: `metric`'s `stat` compared with `threshold` by `op`."""

    # strict: `threshold: true` is not 1; finite: a NaN threshold compares false with everything
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    metric: Metric = Field(description="Benchmark metric to check, e.g. ttft_ms or error_rate.")
    stat: Stat = Field(
        default="p95",
        description="Statistic of a latency metric (mean, p50..p99); 'value' for scalar metrics.",
    )
    op: Op = Field(default="<=", description="Comparison: observed OP threshold must hold.")
    threshold: float = Field(description="The bound the observed value is compared with.")
    concurrency: int | None = Field(
        default=None,
        ge=1,
        description="Check only this concurrency level; empty checks every level.",
    )

    @model_validator(mode="after")
    def _stat_fits_metric(self) -> GateSpec:
        latency = self.metric in LATENCY_METRICS
        if latency and self.stat == "value":
            raise ValueError(f"metric {self.metric} needs a percentile stat (mean, p50..p99)")
        if not latency and self.stat != "value":
            raise ValueError(f"metric {self.metric} is one number per level: use stat 'value'")
        why = _never_met(self.metric, self.op, self.threshold)
        if why:  # UserInputError: the config's error names gates.N.threshold
            raise UserInputError("threshold", f"{self.threshold:g} can never be met: {why}")
        return self


def _never_met(metric: str, op: str, threshold: float) -> str | None:
    """Why no measurement can satisfy `metric op threshold`, if none can: every metric is
    >= 0, a latency is > 0, an error rate is at most 1. Such a gate rejects every candidate
    (and a latency limit must be positive for the planner to meet it)."""
    upper, strict = op in ("<", "<="), op in ("<", ">")
    if metric in LATENCY_METRICS and upper and threshold <= 0:
        return f"{metric} is always above 0"
    if upper and (threshold < 0 or (strict and threshold == 0)):
        return f"{metric} is never below 0"
    if metric == "error_rate" and not upper and (threshold > 1 or (strict and threshold == 1)):
        return "error_rate is never above 1"
    return None
