"""The planner: every (instance, tensor-parallel degree, instance count) option, whether it fits
and meets the latency limits and why not, and the cheapest one that holds the workload.

A sharded model copy uses tp GPUs; the instance's other GPUs hold more copies (DJL Serving
starts GPUs / tp workers), so concurrency is spread over copies rather than GPUs left idle.
Instances scale out from `instance_count` up to `max_instance_count` when memory or the latency
limits need more copies (or several small instances cost less than one large one). A latency
limit only removes options or adds instances: one every option already meets changes nothing.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Literal

import pandas as pd
from lmiflow.sizing.accelerators import Accelerator, facts_for, load_accelerators
from lmiflow.sizing.catalog import CPU, load_catalog
from lmiflow.sizing.latency import (
    ERROR_BAND,
    MEDIAN_STATS,
    Efficiency,
    Roofline,
    default_efficiency,
    latency_inputs,
    predicted_stats,
)
from lmiflow.sizing.memory import (
    DTypeChoice,
    MemoryBreakdown,
    kv_bytes_per_token,
    max_concurrency,
    per_gpu_estimate,
    resolve_dtypes,
    total_estimate,
    weight_bytes,
)
from lmiflow.sizing.model_spec import ModelSpec
from pydantic import BaseModel, Field, model_validator

TP_DEGREES = (1, 2, 4, 8)
# A limit is met when the upper end of the prediction's likely range (the prediction times the
# 90th percentile of measured / predicted on published points never fitted to,
# sizing.latency.ERROR_BAND) meets it. LATENCY_MARGIN is any extra share of the limit a user
# wants on top of that; the error band already is the margin the model's error earns.
LATENCY_MARGIN = 0.0
METRIC_LABEL = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "e2e_ms": "E2E"}


class LatencyLimit(BaseModel):
    """A latency bound the chosen option's prediction must meet (from a gate or a flag)."""

    metric: Literal["ttft_ms", "tpot_ms", "e2e_ms"]
    stat: str = "p50"
    threshold: float = Field(gt=0)
    concurrency: int | None = Field(default=None, ge=1, description="Check at this many "
                                    "requests in flight (endpoint-wide); empty: the workload's.")
    source: str = "limit"

    @model_validator(mode="after")
    def _predicted_stat(self) -> LatencyLimit:
        known = predicted_stats(self.metric)
        if self.stat not in known:
            raise ValueError(f"a {self.metric} limit on {self.stat} cannot be planned: the "
                             f"latency model predicts {self.metric} at "
                             f"{', '.join(known)} only")
        return self

    @property
    def label(self) -> str:
        return f"{METRIC_LABEL[self.metric]} {self.stat}"

    @property
    def key(self) -> str:
        """The prediction this limit is checked against: the tail it names, or the median."""
        return self.metric if self.stat in MEDIAN_STATS else f"{self.metric}@{self.stat}"


class PlanRequest(BaseModel):
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    max_input_tokens: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    concurrency: int = Field(gt=0)
    instance_count: int = Field(default=1, ge=1)
    max_instance_count: int | None = Field(default=None, ge=1, description="Scale out up to "
                                           "this many instances; empty: instance_count.")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    allow: list[str] = Field(default_factory=list, description="Instance type globs.")
    instance_type: str | None = None
    tensor_parallel_degree: int | None = None
    max_usd_per_hour: float | None = None
    engine: Literal["vllm", "trtllm", "local"] = "vllm"
    latency_limits: list[LatencyLimit] = Field(default_factory=list)
    latency_margin: float = Field(default=LATENCY_MARGIN, ge=0, lt=1, description="Extra "
                                  "share of a limit kept free beyond the error band.")
    error_band: dict[Literal["ttft_ms", "tpot_ms"], tuple[float, float]] | None = Field(
        default=None, description="Measured / predicted at p10 and p90 per metric, instead of "
                                  "sizing.latency.ERROR_BAND (what the published points and "
                                  "calibration earned).")

    @property
    def tokens(self) -> int:
        return self.max_input_tokens + self.max_output_tokens

    @property
    def counts(self) -> range:
        return range(self.instance_count,
                     max(self.max_instance_count or self.instance_count, self.instance_count) + 1)


class LimitCheck(BaseModel):
    """One latency limit on this option: the prediction at the limit's statistic, its likely
    upper end, and how far below the limit that is."""

    metric: str
    stat: str
    threshold: float
    concurrency: int | None
    predicted: float
    upper: float
    headroom_pct: float = Field(description="(threshold - upper) / threshold x 100; negative: "
                                            "over.")


class PredictedLatency(BaseModel):
    """The workload on this option: `concurrency` requests of the planned shape, spread over
    every copy of every instance."""

    ttft_ms: float
    tpot_ms: float
    e2e_ms: float
    output_tokens_per_s: float = Field(description="All instances together.")
    calibrated: bool
    bound: str
    saturated: bool
    terms_ms: dict[str, float] = Field(default_factory=dict)
    likely_ms: dict[str, tuple[float, float]] = Field(default_factory=dict, description="Per "
                                                      "metric, the likely range (80 % of "
                                                      "measurements fall in it).")
    ttft_tail_ms: dict[str, float] = Field(default_factory=dict, description="TTFT p50, p90, "
                                           "p95, p99.")
    slots: int = Field(default=0, description="Requests a copy runs at once.")
    queued_per_copy: int = Field(default=0, description="Requests per copy waiting for a "
                                 "batch slot (the KV cache holds fewer than arrive).")
    limits: list[LimitCheck] = Field(default_factory=list)


class Option(BaseModel):
    instance_type: str
    accelerator: str
    gpu_count: int
    gpu_memory_bytes: int
    usable_bytes_per_gpu: int
    tensor_parallel_degree: int
    model_copies: int
    instance_count: int
    dtype: str = Field(description="Serving dtype on this accelerator (option.dtype).")
    fits: bool = Field(description="Memory holds the workload.")
    eligible: bool = Field(description="Fits and meets every constraint (latency, price).")
    reason: str
    binding: str | None = Field(description="What fails: tp_rule, context, weights, overhead, "
                                            "kv_cache, dtype, latency, price; None when it fits.")
    per_gpu_required_bytes: int
    per_gpu: dict[str, int]
    concurrency_per_copy: int
    usd_per_hour: float | None
    price_source: str
    memory_source: str = Field(default="", description="Where the memory figure comes from "
                                                       "(the local target: what is available).")
    max_concurrency: int = Field(description="Requests the option holds, all instances: memory "
                                             "and, with latency limits, the limits.")
    max_concurrency_per_copy: int = 0
    predicted: PredictedLatency | None = None
    usd_per_1m_output_tokens: float | None = None
    rank: int | None = None


class ModelSummary(BaseModel):
    model_type: str
    architecture: str | None
    parameters: int
    active_parameters: int
    parameter_source: str
    kv_cache_bytes_per_token: int
    estimate_note: str | None = None


class FactorsUsed(BaseModel):
    """The latency model's factors a plan predicted with on one accelerator: what a benchmark
    of the chosen option is compared with (sizing.calibration.records_for_option)."""

    engine: str
    records: int = Field(description="Benchmark records they were fitted from; 0: the "
                                     "engine's uncalibrated defaults.")
    efficiency: Efficiency


class Plan(BaseModel):
    model: ModelSummary
    request: PlanRequest
    dtypes: DTypeChoice
    memory: MemoryBreakdown
    options: list[Option]
    chosen: Option | None
    chosen_reason: str
    not_planned: list[dict] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    calibration: dict[str, str] = Field(default_factory=dict, description="Accelerator: how its "
                                        "latency factors were set (calibrated from N records).")
    factors: dict[str, FactorsUsed] = Field(default_factory=dict, description="Accelerator: "
                                            "the latency factors its predictions used.")

    def calibration_used(self) -> Calibration:
        """The fitted factors this plan predicted with, in the form plan() takes."""
        return {(acc, f.engine): (f.efficiency, f.records)
                for acc, f in self.factors.items() if f.records}


def _gb(b: float) -> str:
    return f"{b / 1e9:.1f} GB"


def tp_rule_violation(spec: ModelSpec, tp: int) -> str | None:
    """Why tensor parallelism `tp` cannot shard this model, or None."""
    if spec.num_attention_heads % tp:
        return f"{spec.num_attention_heads} attention heads not divisible by tp {tp}"
    kv = spec.num_kv_heads
    if not spec.is_mla and kv % tp and tp % kv:
        return f"{kv} KV heads and tp {tp}: neither divides the other"
    return None


def _records(cat: pd.DataFrame) -> list[dict]:
    """Rows as dicts, memoised on the frame: pandas row iteration costs more than a plan."""
    cached = cat.attrs.get("_records")
    if cached is None:
        cached = cat.to_dict("records")
        cat.attrs["_records"] = cached
    return cached


Calibration = Mapping[tuple[str, str], tuple[Efficiency, int]]


def _ms(v: float) -> str:
    return f"{v:.1f} ms" if v < 10 else f"{v:.0f} ms"


Band = Mapping[str, tuple[float, float]]


def error_band(calibrated: bool, override: Mapping[str, tuple[float, float]] | None = None
               ) -> dict[str, tuple[float, float]]:
    """Measured / predicted at p10 and p90 per metric (E2E: the wider of TTFT's and TPOT's)."""
    which = "calibrated" if calibrated else "uncalibrated"
    band = {m: (override or {}).get(m) or ERROR_BAND[m][which] for m in ("ttft_ms", "tpot_ms")}
    band["e2e_ms"] = (min(b[0] for b in band.values()), max(b[1] for b in band.values()))
    return band


def _check(latency: Mapping[str, float], lim: LatencyLimit, band: Band) -> LimitCheck:
    v = latency[lim.key]
    upper = v * band[lim.metric][1]
    return LimitCheck(metric=lim.metric, stat=lim.stat, threshold=lim.threshold,
                      concurrency=lim.concurrency, predicted=v, upper=upper,
                      headroom_pct=(lim.threshold - upper) / lim.threshold * 100)


def _violations(latency: Mapping[str, float], limits: list[LatencyLimit], margin: float,
                band: Band) -> list[str]:
    """Why predicted latencies miss their limits: the likely upper end (the prediction times
    the error band's p90) over the limit, less any extra margin."""
    out = []
    for lim in limits:
        c = _check(latency, lim, band)
        bound = lim.threshold * (1 - margin)
        if c.upper > bound:
            extra = f" less the {margin:.0%} margin" if margin else ""
            likely = f" (likely up to {_ms(c.upper)})" if c.upper != c.predicted else ""
            out.append(f"predicted {lim.label} {_ms(c.predicted)}{likely} > {lim.source} "
                       f"{lim.threshold:g} ms{extra}")
    return out


def _largest_meeting(roof: Roofline, limits: list[LatencyLimit], margin: float, most: int,
                     band: Band) -> int:
    """Most requests per copy (up to `most`) whose prediction meets every limit; 0 if none.
    Latency grows with concurrency, so a binary search finds the edge."""
    def ok(b: int) -> bool:
        return not _violations(roof.latency_ms(b), limits, margin, band)

    if most < 1 or not ok(1):
        return 0
    lo, hi = 1, most
    if ok(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def efficiency_for(facts: Accelerator | None, engine: str, calibration: Calibration
                   ) -> tuple[Efficiency | None, int]:
    """The factors a prediction uses on this accelerator, and how many records fitted them (0:
    the engine's uncalibrated defaults)."""
    if facts is None:
        return None, 0
    fitted = calibration.get((facts.name, engine))
    if fitted:
        return fitted
    return default_efficiency(engine, facts.interconnect), 0


def plan(spec: ModelSpec, req: PlanRequest, catalog: pd.DataFrame | None = None,
         accelerators: Mapping[str, Accelerator] | None = None,
         calibration: Calibration | None = None) -> Plan:
    """Every option over the catalog, ranked; `chosen` is the cheapest eligible option.

    `calibration` maps (accelerator, engine) to fitted efficiency factors and the number of
    records behind them; other accelerators use the engine's defaults (uncalibrated)."""
    cat = load_catalog() if catalog is None else catalog
    accels = load_accelerators() if accelerators is None else accelerators
    dtypes = resolve_dtypes(spec, req.dtype, req.kv_cache_dtype)
    wbytes = weight_bytes(spec, dtypes.weights)
    tokens = req.tokens
    warnings: list[str] = []
    if spec.estimate_note:
        warnings.append(spec.estimate_note)
    if dtypes.note:
        warnings.append(dtypes.note)
    context_error = None
    if spec.max_position_embeddings and tokens > spec.max_position_embeddings:
        context_error = (f"context {tokens} tokens exceeds the model's "
                         f"max_position_embeddings {spec.max_position_embeddings}")

    rows = _records(cat)
    if req.allow:
        rows = [r for r in rows
                if any(fnmatch.fnmatchcase(r["instance_type"], g) for g in req.allow)]
    if req.instance_type:
        rows = [r for r in rows if r["instance_type"] == req.instance_type]
    not_planned = [{"instance_type": r["instance_type"], "reason": r["not_planned_reason"]}
                   for r in rows if not r["planned"]]
    rows = [SimpleNamespace(**r) for r in rows if r["planned"]]

    # Instance types often share an accelerator and GPU count (g5.xlarge .. g5.16xlarge): the
    # caches make each (accelerator, tp, requests per copy) cost one estimate and one search.
    ctx = SimpleNamespace(spec=spec, req=req, dtypes=dtypes, wbytes=wbytes, tokens=tokens,
                          context_error=context_error, estimates={}, rooflines={},
                          searches={}, predictions={})
    options: list[Option] = []
    calibration_notes: dict[str, str] = {}
    factors: dict[str, FactorsUsed] = {}
    for r in rows:
        facts = facts_for(r.accelerator, accels)
        eff, records = efficiency_for(facts, req.engine, calibration or {})
        if facts is None:
            if req.latency_limits:
                warnings.append(f"latency limits not checked on {r.instance_type}: no "
                                f"accelerator facts for {r.accelerator}")
        else:
            factors[facts.name] = FactorsUsed(engine=req.engine, records=records, efficiency=eff)
            calibration_notes[facts.name] = (
                f"{req.engine} factors calibrated from {records} benchmark record(s)" if records
                else f"uncalibrated {req.engine} defaults")
        for tp in TP_DEGREES:
            if tp > int(r.accelerator_count) or (
                    req.tensor_parallel_degree and tp != req.tensor_parallel_degree):
                continue
            options.append(_option(ctx, r, tp, facts, eff, records > 0))

    chosen, chosen_reason = _choose(options, req, context_error)
    return Plan(
        model=ModelSummary(
            model_type=spec.model_type, architecture=spec.architecture,
            parameters=spec.parameters, active_parameters=spec.active_parameters,
            parameter_source=spec.parameter_source,
            kv_cache_bytes_per_token=kv_bytes_per_token(spec, dtypes.kv_cache, 1),
            estimate_note=spec.estimate_note),
        request=req, dtypes=dtypes,
        memory=total_estimate(spec, dtypes, tokens, req.concurrency),
        options=options, chosen=chosen, chosen_reason=chosen_reason,
        not_planned=not_planned, warnings=warnings, calibration=calibration_notes,
        factors=factors,
    )


def _option(ctx: SimpleNamespace, r: SimpleNamespace, tp: int, facts: Accelerator | None,
            eff: Efficiency | None, calibrated: bool) -> Option:
    """One (instance type, tp) option at the fewest instances that hold the workload."""
    spec, req, dtypes = ctx.spec, ctx.req, ctx.dtypes
    gpus = int(r.accelerator_count)
    usable = int(r.memory_per_accelerator_bytes * req.gpu_memory_utilization)
    price = None if pd.isna(r.usd_per_hour) else float(r.usd_per_hour)
    copies = gpus // tp
    max_count = req.counts[-1]

    def layout(count: int):
        per_copy = math.ceil(req.concurrency / (copies * count))
        est = ctx.estimates.get((tp, per_copy))
        if est is None:
            est = ctx.estimates[tp, per_copy] = per_gpu_estimate(
                spec, dtypes, tp, ctx.tokens, per_copy, ctx.wbytes)
        return per_copy, est, max_concurrency(usable, est)

    count = req.instance_count
    per_copy, est, maxc = layout(count)
    binding, reason = None, ""
    rule = tp_rule_violation(spec, tp)
    if rule:
        binding, reason = "tp_rule", rule
    elif ctx.context_error:
        binding, reason = "context", ctx.context_error
    elif est.weights_bytes > usable:
        binding = "weights"
        reason = (f"weights {_gb(est.weights_bytes)} per GPU > {_gb(usable)} usable "
                  f"({req.gpu_memory_utilization:.0%} of "
                  f"{_gb(r.memory_per_accelerator_bytes)})")
    elif est.weights_bytes + est.overhead_bytes - est.overhead_terms["sampler_logits"] > usable:
        binding = "overhead"
        reason = (f"weights {_gb(est.weights_bytes)} + runtime overhead "
                  f"{_gb(est.overhead_bytes)} per GPU > {_gb(usable)} usable")
    elif maxc < per_copy:
        need = math.ceil(req.concurrency / (copies * maxc)) if maxc else max_count + 1
        if need <= max_count:
            count = need
            per_copy, est, maxc = layout(count)
        if maxc < per_copy:
            binding = "kv_cache"
            reason = (f"KV cache: room for {maxc} sequence(s) of {ctx.tokens} tokens per copy, "
                      f"need {per_copy} ({_gb(est.kv_cache_bytes)} per GPU)"
                      + (f" on {count} instances" if count > 1 else ""))

    serve_dtype = dtypes.activations
    no_bf16 = facts is not None and not facts.supports_bf16
    if no_bf16 and serve_dtype == "bf16":
        serve_dtype = "fp16"
    if (binding is None and dtypes.weights == "fp8" and facts is not None
            and facts.compute_capability is not None and facts.compute_capability < 8.0):
        binding = "dtype"
        reason = f"fp8 weights need an Ampere or newer GPU, not {r.accelerator}"

    lat_max = maxc
    predicted = None
    roof = None
    workload_limits = [lim for lim in req.latency_limits if lim.concurrency is None]
    level_limits = [lim for lim in req.latency_limits if lim.concurrency is not None]
    band = error_band(calibrated, req.error_band)
    if binding in (None, "kv_cache") and facts is not None and eff is not None and maxc >= 1:
        # Batch slots per copy: what the KV cache holds (the deploy's max_rolling_batch_size
        # is at most that); more requests than that wait for a slot.
        roof = ctx.rooflines.get((facts.name, tp, maxc))
        if roof is None:
            roof = ctx.rooflines[facts.name, tp, maxc] = Roofline(latency_inputs(
                spec, dtypes, facts, req.engine, tp, req.max_input_tokens,
                req.max_output_tokens, per_copy, ctx.wbytes, max_batch=maxc), eff)
        if workload_limits:
            key = (facts.name, tp, maxc)
            if key not in ctx.searches:
                ctx.searches[key] = _largest_meeting(roof, workload_limits, req.latency_margin,
                                                     maxc, band)
            lat_max = ctx.searches[key]
    if roof is not None and binding in (None, "kv_cache"):
        misses: list[str] = []
        if lat_max < per_copy and binding is None:
            need = (math.ceil(req.concurrency / (copies * lat_max)) if lat_max
                    else max_count + 1)
            if need <= max_count:
                count = max(count, need)
                per_copy, est, maxc = layout(count)
        for n in range(count, max_count + 1 if level_limits and binding is None else count + 1):
            misses = [m for lim in level_limits for m in _violations(
                roof.latency_ms(math.ceil(lim.concurrency / (copies * n))), [lim],
                req.latency_margin, band)]
            if not misses or n == max_count:
                if n != count:
                    count = n
                    per_copy, est, maxc = layout(count)
                break
        pred = ctx.predictions.get((facts.name, tp, maxc, per_copy))
        if pred is None:
            pred = ctx.predictions[facts.name, tp, maxc, per_copy] = roof.predict(per_copy)
        at = {"ttft_ms": pred.ttft_ms, "tpot_ms": pred.tpot_ms, "e2e_ms": pred.e2e_ms,
              **{f"ttft_ms@{k}": v for k, v in pred.ttft_tail_ms.items()}}
        misses = _violations(at, workload_limits, req.latency_margin, band) + misses
        checks = [_check(at, lim, band) for lim in workload_limits] + [
            _check(roof.latency_ms(math.ceil(lim.concurrency / (copies * count))), lim, band)
            for lim in level_limits]
        tps = req.concurrency * req.max_output_tokens / (pred.e2e_ms / 1e3)
        predicted = PredictedLatency(
            ttft_ms=pred.ttft_ms, tpot_ms=pred.tpot_ms, e2e_ms=pred.e2e_ms,
            output_tokens_per_s=tps, calibrated=calibrated, bound=pred.bound,
            saturated=pred.saturated, terms_ms=pred.terms_ms,
            likely_ms={m: (at[m] * band[m][0], at[m] * band[m][1])
                       for m in ("ttft_ms", "tpot_ms", "e2e_ms")},
            ttft_tail_ms=pred.ttft_tail_ms, slots=pred.slots, queued_per_copy=pred.queued,
            limits=checks)
        if binding == "kv_cache":
            reason += (f"; the engine would queue the other {pred.queued} per copy for a "
                       f"batch slot: predicted TTFT {_ms(pred.ttft_ms)} (slot wait "
                       f"{_ms(pred.terms_ms['slot_wait'])}), TPOT {_ms(pred.tpot_ms)}")
        elif misses:
            binding = "latency"
            where = (f"{per_copy} request(s) per copy" if per_copy > 1
                     else "1 request per copy")
            reason = "; ".join(misses) + f" at {where}" + (
                f" on {count} instances" if count > 1 else "")

    fits = binding in (None, "latency")
    per_copy_max = min(maxc, lat_max) if binding in (None, "latency", "kv_cache") else 0
    total_max = per_copy_max * copies * count
    total_price = None if price is None else price * count
    eligible = binding is None
    if binding is None:
        idle = gpus - copies * tp
        tightest = min((c for c in (predicted.limits if predicted else [])),
                       key=lambda c: c.headroom_pct, default=None)
        reason = (f"fits: {copies} model cop{'y' if copies == 1 else 'ies'} of tp {tp}"
                  + (f", {idle} GPU(s) idle" if idle else
                     (f" use all {gpus} GPUs" if gpus > 1 else ""))
                  + (f" on each of {count} instances" if count > 1 else "")
                  + ("" if r.accelerator == CPU else
                     f"; holds {total_max} concurrent requests"
                     + (f" ({per_copy_max} per copy)" if copies * count > 1 else ""))
                  + (" within the latency limits" if req.latency_limits and facts else "")
                  + (f"; {METRIC_LABEL[tightest.metric]} {tightest.stat} likely up to "
                     f"{_ms(tightest.upper)}, {tightest.headroom_pct:.0f}% below the "
                     f"{tightest.threshold:g} ms limit" if tightest else ""))
        if serve_dtype != dtypes.activations:
            reason += "; served in fp16 (no bf16 on this GPU)"
        if req.max_usd_per_hour is not None and (
                total_price is None or total_price > req.max_usd_per_hour):
            eligible = False
            binding = "price"
            reason += (f"; excluded: ${total_price:.2f}/h over the "
                       f"${req.max_usd_per_hour:.2f}/h ceiling" if total_price is not None
                       else "; excluded: no known price under a price ceiling")
    usd_per_1m = None
    if predicted and total_price is not None and predicted.output_tokens_per_s > 0:
        usd_per_1m = total_price / (predicted.output_tokens_per_s * 3600) * 1e6
    return Option(
        instance_type=r.instance_type, accelerator=r.accelerator, gpu_count=gpus,
        gpu_memory_bytes=int(r.memory_per_accelerator_bytes), usable_bytes_per_gpu=usable,
        tensor_parallel_degree=tp, model_copies=copies, instance_count=count,
        dtype=serve_dtype, fits=fits, eligible=eligible, reason=reason, binding=binding,
        per_gpu_required_bytes=est.total_bytes,
        per_gpu={"weights_bytes": est.weights_bytes, "kv_cache_bytes": est.kv_cache_bytes,
                 "overhead_bytes": est.overhead_bytes, "usable_bytes": usable},
        concurrency_per_copy=per_copy, usd_per_hour=total_price,
        price_source=r.price_source or "", memory_source=r.memory_source or "",
        max_concurrency=total_max,
        max_concurrency_per_copy=per_copy_max, predicted=predicted,
        usd_per_1m_output_tokens=usd_per_1m,
    )


def _choose(options: list[Option], req: PlanRequest,
            context_error: str | None) -> tuple[Option | None, str]:
    """Rank in place (pandas sort) and pick: eligible first, priced before unpriced, cheapest
    (all instances), then the smaller tp (more model copies, fewer collectives), then the most
    headroom."""
    if not options:
        return None, ("no instance type matches the constraints"
                      + (f" (allow: {', '.join(req.allow)})" if req.allow else "")
                      + (f" (instance_type: {req.instance_type})" if req.instance_type else ""))
    df = pd.DataFrame({
        "i": range(len(options)),
        "eligible": [o.eligible for o in options],
        "fits": [o.fits for o in options],
        "unpriced": [o.usd_per_hour is None for o in options],
        "price": [o.usd_per_hour if o.usd_per_hour is not None else math.inf for o in options],
        "maxc": [o.max_concurrency for o in options],
        "tp": [o.tensor_parallel_degree for o in options],
        "need": [o.per_gpu_required_bytes for o in options],
    })
    # A sort on several columns is stable: ties keep catalog order.
    df = df.sort_values(["eligible", "fits", "unpriced", "price", "tp", "maxc", "need"],
                        ascending=[False, False, True, True, True, False, True])
    order = df["i"].tolist()
    ranked = [options[i] for i in order]
    for rank, o in enumerate(ranked, 1):
        o.rank = rank
    options[:] = ranked
    best = ranked[0]
    if not best.eligible:
        if context_error:
            return None, context_error
        fitting = [o for o in ranked if o.fits]
        if fitting:
            first = fitting[0]
            blocked = sorted({o.binding for o in fitting if o.binding})
            what = " and ".join({"latency": "the latency limits",
                                 "price": f"the price ceiling ${req.max_usd_per_hour}/h"}[b]
                                for b in blocked)
            return None, (f"{len(fitting)} option(s) fit in memory but none meets {what}; the "
                          f"cheapest fitting is {first.instance_type} (tp "
                          f"{first.tensor_parallel_degree}): {first.reason}")
        bindings = sorted({o.binding for o in ranked if o.binding})
        largest = max(ranked, key=lambda o: o.gpu_memory_bytes * o.gpu_count)
        return None, (f"no option fits: constraints hit: {', '.join(bindings)}; even "
                      f"{largest.instance_type} fails ({largest.reason})")
    priced = any(o.usd_per_hour is not None for o in ranked)
    why = (f"cheapest option that fits the workload: {best.instance_type}" if priced
           else f"fits the workload: {best.instance_type}")
    if best.instance_count > 1:
        why += f" x{best.instance_count}"
    why += f" with tp {best.tensor_parallel_degree}"
    if req.latency_limits and best.predicted:
        why += " and meets the latency limits"
    if best.usd_per_hour is None:
        why += (" (no known price; no priced option fits)" if priced
                else " (no known price" + (f": {best.price_source})" if best.price_source
                                           else ")"))
    else:
        why += f" at ${best.usd_per_hour:.2f}/h"
        src = best.price_source
        if "uncertain" in src:
            why += f" (price uncertain: {src})"
    return best, why
