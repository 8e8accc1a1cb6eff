"""What a run means, in words a person acts on: the verdict, what production serves now, which
check failed and by how much, and what to try next. One text for the CLI's summary, the report
and the Prefect artifacts, so they never tell different stories.

Numbers are rounded to what a measurement on a shared machine supports (three significant
figures); report.json keeps full precision.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from lmiflow.bench.gate_spec import LATENCY_METRICS

if TYPE_CHECKING:
    from lmiflow.bench.gates import Check
    from lmiflow.report.model import RunReport

METRIC_NAMES = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "itl_ms": "ITL", "e2e_ms": "E2E",
                "output_tokens_per_s": "output tokens/s", "requests_per_min": "requests/min",
                "error_rate": "error rate", "goodput": "goodput",
                "usd_per_1m_output_tokens": "$ per 1M output tokens"}


class ProductionState(BaseModel):
    """The production endpoint as the run left it."""

    endpoint: str
    status: str | None = Field(default=None, description="None: no production endpoint exists.")
    config: str | None = None
    since: dt.datetime | None = None
    failure_reason: str | None = None
    answering: bool | None = Field(
        default=None, description="False: it gave no answer within a deadline of this run "
        "(its status may still say InService); None: not asked.")


class Outcome(BaseModel):
    """The run in words: report.json's `outcome`."""

    headline: str = Field(description="One line: the verdict and what production serves.")
    reasons: list[str] = Field(default_factory=list, description="Each failed check or error.")
    next_steps: list[str] = Field(default_factory=list)


def sig(value: float, digits: int = 3) -> str:
    """`digits` significant figures (whole numbers kept whole), thousands separated, no
    exponent: 21.319599 -> '21.3', 0.01234 -> '0.0123', 12345.6 -> '12,346'."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    rounded = round(value, decimals)  # 99.96 rounds to 100: one decimal fewer
    if rounded:
        decimals = max(0, digits - 1 - math.floor(math.log10(abs(rounded))))
    return f"{rounded:,.{decimals}f}"


def figure(metric: str, value: float | None) -> str:
    """A metric's value with its unit, rounded: '128 ms', '1.52 s', '0 %', '21.3 tokens/s'."""
    if value is None:
        return "no measurement"
    if metric in LATENCY_METRICS:
        return f"{sig(value / 1000)} s" if value >= 10_000 else f"{sig(value)} ms"
    if metric == "error_rate":
        return f"{sig(value * 100, 2)} %"
    if metric == "usd_per_1m_output_tokens":
        return f"${sig(value)}"
    unit = {"output_tokens_per_s": " tokens/s", "requests_per_min": " requests/min",
            "goodput": " requests/s"}.get(metric, "")
    return f"{sig(value)}{unit}"


def check_name(c: Check) -> str:
    where = f" at c={c.concurrency}" if c.concurrency is not None else ""
    rate = getattr(c, "rate_rps", None)
    if rate is not None:
        where = f" at {sig(rate)} requests/s"
    stat = "" if c.stat == "value" else f" {c.stat}"
    return f"{METRIC_NAMES.get(c.metric, c.metric)}{stat}{where}"


def explain_check(c: Check) -> str:
    """Which check, what was measured, the limit, and by how much it missed (or passed)."""
    name = check_name(c)
    if c.observed is None:
        return f"{name}: no measurement ({c.note or 'no samples'})"
    obs, limit = figure(c.metric, c.observed), figure(c.metric, c.threshold)
    if c.kind == "regression" and c.baseline is not None:
        worse = getattr(c, "worsening", None)
        change = (worse - 1) * 100 if worse is not None else (
            (c.observed / c.baseline - 1) * 100 if c.baseline else None)
        higher_is_worse = c.op in ("<", "<=")
        change_text = "" if change is None else (
            f" ({'+' if change >= 0 else '-'}{sig(abs(change), 2)} %)")
        bound = (f"limit {limit} ({'at most' if higher_is_worse else 'at least'})"
                 if higher_is_worse or c.threshold > 0 else "no lower limit at this percentage")
        text = f"{name}: {obs} vs production's {figure(c.metric, c.baseline)}{change_text}; {bound}"
        low, high = getattr(c, "worsening_low", None), getattr(c, "worsening_high", None)
        if low is not None and high is not None:
            text += f", interval {sig((low - 1) * 100, 2)} to {sig((high - 1) * 100, 2)} %"
        return text
    text = f"{name}: {obs}, limit {c.op} {limit}"
    if not c.passed and c.threshold:
        over = abs(c.observed - c.threshold) / abs(c.threshold) * 100
        text += f" ({sig(over, 2)} % {'over' if c.op in ('<', '<=') else 'under'})"
    elif not c.passed:
        text += f" (by {figure(c.metric, abs(c.observed - c.threshold))})"
    return text + (f"; {c.note}" if c.note else "")


def when(t: dt.datetime | None) -> str:
    if t is None:
        return ""
    t = t.astimezone(dt.timezone.utc) if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    return t.strftime(" since %Y-%m-%d %H:%M UTC")


def production_line(p: ProductionState | None) -> str:
    if p is None:
        return "production not checked"
    if p.status is None:
        return f"no production endpoint {p.endpoint} exists (nothing was created)"
    # What production's state says, never an assumption: a Failed or silent production is
    # not "still serving", whatever this run did or did not change.
    if p.status == "Failed":
        why = (p.failure_reason or "no reason given").splitlines()[0][:160]
        return f"production {p.endpoint} is Failed and serves nothing ({why})"
    if p.answering is False:
        return (f"production {p.endpoint} is not answering (status {p.status}, config "
                f"{p.config}): look at it now")
    serving = f"still serving {p.config}" if p.config else f"still {p.status}"
    return f"production unchanged: {p.endpoint} {serving}{when(p.since)}"


def _gate_next_steps(failed: list[Check]) -> list[str]:
    steps: list[str] = []
    kinds = {c.kind for c in failed}
    metrics = {c.metric for c in failed}
    if any(c.observed is None for c in failed) or "error_rate" in metrics:
        steps.append("requests failed: read the candidate's errors in the report's benchmark "
                     "section (and its server log) before anything else")
    if "regression" in kinds:
        steps.append("the candidate is slower than production under the same load: if the "
                     "change should not affect speed, rerun; otherwise compare the two "
                     "serving.properties, or raise regression.max_regression_pct")
    if "slo" in kinds and metrics & {*LATENCY_METRICS, "output_tokens_per_s", "goodput"}:
        steps.append("a latency or throughput gate missed: `lmiflow plan` with --max-ttft-ms "
                     "or --max-tpot-ms shows instances predicted to meet it; or lower "
                     "workload.concurrency, or relax the gate in `gates`")
    return steps


def _idle_production(r: RunReport) -> list[str]:
    """What the first request to a production left at zero copies waits."""
    if r.promotion is None or not r.promotion.starts_on_request:
        return []
    c = r.component
    wait = (f"about {c.cold_start_s:.0f} s, as this run's create_endpoint took (instance "
            "start plus model load)" if c is not None and c.cold_start_s is not None
            else "an instance start plus the model load (not measured by this run)")
    return [f"production runs no copy (min copies 0) and was not smoke-tested: the next "
            f"request starts one and waits the cold start, {wait}"]


def outcome(r: RunReport, production: ProductionState | None) -> Outcome:
    """The verdict in words for a finished run."""
    prod = production_line(production)
    if r.status == "promoted":
        serving = r.promotion.action if r.promotion else "promoted"
        config = production.config if production and production.config else "the candidate"
        return Outcome(headline=f"PROMOTED: {r.endpoint} now serves {config} ({serving})",
                       next_steps=_idle_production(r))
    if r.status == "planned":
        return Outcome(headline=f"PLANNED: nothing created; {r.endpoint} not touched")
    if r.status == "rejected" and r.gate is not None:
        failed = [c for c in r.gate.checks if not c.passed]
        return Outcome(
            headline=f"REJECTED by the gate ({len(failed)} of {len(r.gate.checks)} checks "
                     f"failed); {prod}",
            reasons=[explain_check(c) for c in failed],
            next_steps=_gate_next_steps(failed))
    step = r.failed_step or "an unknown step"
    error = (r.error or "no error recorded").strip().splitlines()[0]
    return Outcome(
        headline=f"FAILED at {step}; {prod}",
        reasons=[error],
        next_steps=["fix the cause above and run the same command again: it adopts or "
                    "removes what this run left"])
