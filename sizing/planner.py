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
    Efficiency,
    Roofline,
    default_efficiency,
    latency_inputs,
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
from pydantic import BaseModel, Field

TP_DEGREES = (1, 2, 4, 8)
# A prediction must beat a latency limit by this share of the limit. The uncalibrated model is
# about 13 % off published measurements on average, either way (docs/latency-model.md): a
# prediction within 10 % of the limit is too close to call, so such options are rejected,
# while one clearly under it is kept rather than demanding a worst-case 25-35 % headroom.
LATENCY_MARGIN = 0.10
METRIC_LABEL = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "e2e_ms": "E2E"}


class LatencyLimit(BaseModel):
    """A latency bound the chosen option's prediction must meet (from a gate or a flag)."""

    metric: Literal["ttft_ms", "tpot_ms", "e2e_ms"]
    stat: str = "p50"
    threshold: float = Field(gt=0)
    concurrency: int | None = Field(default=None, ge=1, description="Check at this many "
                                    "requests in flight (endpoint-wide); empty: the workload's.")
    source: str = "limit"

    @property
    def label(self) -> str:
        return f"{METRIC_LABEL[self.metric]} {self.stat}"


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
    latency_margin: float = Field(default=LATENCY_MARGIN, ge=0, lt=1)

    @property
    def tokens(self) -> int:
        return self.max_input_tokens + self.max_output_tokens

    @property
    def counts(self) -> range:
        return range(self.instance_count,
                     max(self.max_instance_count or self.instance_count, self.instance_count) + 1)


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


def _violations(latency: Mapping[str, float], limits: list[LatencyLimit], margin: float
                ) -> list[str]:
    """Why predicted latencies miss their limits: over the limit, or inside by less than the
    margin."""
    out = []
    for lim in limits:
        v = latency[lim.metric]
        if v > lim.threshold:
            out.append(f"predicted {lim.label} {_ms(v)} > {lim.source} {lim.threshold:g} ms")
        elif v > lim.threshold * (1 - margin):
            out.append(f"predicted {lim.label} {_ms(v)} is within the {margin:.0%} margin of "
                       f"{lim.source} {lim.threshold:g} ms")
    return out


def _largest_meeting(roof: Roofline, limits: list[LatencyLimit], margin: float, most: int
                     ) -> int:
    """Most requests per copy (up to `most`) whose prediction meets every limit; 0 if none.
    Latency grows with concurrency, so a binary search finds the edge."""
    def ok(b: int) -> bool:
        return not _violations(roof.latency_ms(b), limits, margin)

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
    if binding in (None, "kv_cache") and facts is not None and eff is not None:
        roof = ctx.rooflines.get((facts.name, tp))
        if roof is None:
            roof = ctx.rooflines[facts.name, tp] = Roofline(latency_inputs(
                spec, dtypes, facts, req.engine, tp, req.max_input_tokens,
                req.max_output_tokens, per_copy, ctx.wbytes), eff)
        if workload_limits:
            key = (facts.name, tp, maxc)
            if key not in ctx.searches:
                ctx.searches[key] = _largest_meeting(roof, workload_limits, req.latency_margin,
                                                     maxc)
            lat_max = ctx.searches[key]
    if roof is not None and binding is None:
        misses: list[str] = []
        if lat_max < per_copy:
            need = (math.ceil(req.concurrency / (copies * lat_max)) if lat_max
                    else max_count + 1)
            if need <= max_count:
                count = max(count, need)
                per_copy, est, maxc = layout(count)
        for n in range(count, max_count + 1 if level_limits else count + 1):
            misses = [m for lim in level_limits for m in _violations(
                roof.latency_ms(math.ceil(lim.concurrency / (copies * n))), [lim],
                req.latency_margin)]
            if not misses or n == max_count:
                if n != count:
                    count = n
                    per_copy, est, maxc = layout(count)
                break
        pred = ctx.predictions.get((facts.name, tp, per_copy))
        if pred is None:
            pred = ctx.predictions[facts.name, tp, per_copy] = roof.predict(per_copy)
        misses = _violations({"ttft_ms": pred.ttft_ms, "tpot_ms": pred.tpot_ms,
                              "e2e_ms": pred.e2e_ms}, workload_limits,
                             req.latency_margin) + misses
        tps = req.concurrency * req.max_output_tokens / (pred.e2e_ms / 1e3)
        predicted = PredictedLatency(
            ttft_ms=pred.ttft_ms, tpot_ms=pred.tpot_ms, e2e_ms=pred.e2e_ms,
            output_tokens_per_s=tps, calibrated=calibrated, bound=pred.bound,
            saturated=pred.saturated, terms_ms=pred.terms_ms)
        if misses:
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
        reason = (f"fits: {copies} model cop{'y' if copies == 1 else 'ies'} of tp {tp}"
                  + (f", {idle} GPU(s) idle" if idle else
                     (f" use all {gpus} GPUs" if gpus > 1 else ""))
                  + (f" on each of {count} instances" if count > 1 else "")
                  + ("" if r.accelerator == CPU else
                     f"; holds {total_max} concurrent requests"
                     + (f" ({per_copy_max} per copy)" if copies * count > 1 else ""))
                  + (" within the latency limits" if req.latency_limits and facts else ""))
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
