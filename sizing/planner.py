"""The planner: every (instance, tensor-parallel degree) option, whether it fits and why not,
and the cheapest one that holds the requested workload.

A sharded model copy uses tp GPUs; the instance's other GPUs hold more copies (DJL Serving
starts GPUs / tp workers), so concurrency is spread over copies rather than GPUs left idle.
"""

from __future__ import annotations

import fnmatch
import math
from types import SimpleNamespace

import pandas as pd
from lmiflow.sizing.catalog import load_catalog
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
# Pre-Ampere GPUs have no bf16 (and no fp8): vLLM refuses bf16 there, so a bf16 model is
# served in fp16 on them (same size, so sizing holds; the option says so).
NO_BF16 = ("NVIDIA T4",)


class PlanRequest(BaseModel):
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    max_input_tokens: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    concurrency: int = Field(gt=0)
    instance_count: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    allow: list[str] = Field(default_factory=list, description="Instance type globs.")
    instance_type: str | None = None
    tensor_parallel_degree: int | None = None
    max_usd_per_hour: float | None = None

    @property
    def tokens(self) -> int:
        return self.max_input_tokens + self.max_output_tokens


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
    fits: bool
    eligible: bool = Field(description="Fits and meets every constraint (price ceiling).")
    reason: str
    binding: str | None = Field(description="What fails: tp_rule, context, weights, overhead, "
                                            "kv_cache, price; None when it fits.")
    per_gpu_required_bytes: int
    per_gpu: dict[str, int]
    concurrency_per_copy: int
    usd_per_hour: float | None
    price_source: str
    max_concurrency: int
    rank: int | None = None


class ModelSummary(BaseModel):
    model_type: str
    architecture: str | None
    parameters: int
    active_parameters: int
    parameter_source: str
    kv_cache_bytes_per_token: int
    estimate_note: str | None = None


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


def plan(spec: ModelSpec, req: PlanRequest, catalog: pd.DataFrame | None = None) -> Plan:
    """Every option over the catalog, ranked; `chosen` is the cheapest eligible option."""
    cat = load_catalog() if catalog is None else catalog
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

    options: list[Option] = []
    for r in rows:
        gpus = int(r.accelerator_count)
        usable = int(r.memory_per_accelerator_bytes * req.gpu_memory_utilization)
        price = None if pd.isna(r.usd_per_hour) else float(r.usd_per_hour)
        for tp in TP_DEGREES:
            if tp > gpus or (req.tensor_parallel_degree and tp != req.tensor_parallel_degree):
                continue
            copies = gpus // tp
            per_copy = math.ceil(req.concurrency / (copies * req.instance_count))
            est = per_gpu_estimate(spec, dtypes, tp, tokens, per_copy, wbytes)
            maxc = max_concurrency(usable, est)
            binding, reason = None, ""
            rule = tp_rule_violation(spec, tp)
            if rule:
                binding, reason = "tp_rule", rule
            elif context_error:
                binding, reason = "context", context_error
            elif est.weights_bytes > usable:
                binding = "weights"
                reason = (f"weights {_gb(est.weights_bytes)} per GPU > {_gb(usable)} usable "
                          f"({req.gpu_memory_utilization:.0%} of "
                          f"{_gb(r.memory_per_accelerator_bytes)})")
            elif est.weights_bytes + est.overhead_bytes - est.overhead_terms[
                    "sampler_logits"] > usable:
                binding = "overhead"
                reason = (f"weights {_gb(est.weights_bytes)} + runtime overhead "
                          f"{_gb(est.overhead_bytes)} per GPU > {_gb(usable)} usable")
            elif maxc < per_copy:
                binding = "kv_cache"
                reason = (f"KV cache: room for {maxc} sequence(s) of {tokens} tokens per copy, "
                          f"need {per_copy} ({_gb(est.kv_cache_bytes)} per GPU)")
            fits = binding is None
            total_max = maxc * copies * req.instance_count if fits or binding == "kv_cache" else 0
            eligible = fits
            if fits:
                idle = gpus - copies * tp
                reason = (f"fits: {copies} model cop{'y' if copies == 1 else 'ies'} of tp {tp}"
                          + (f", {idle} GPU(s) idle" if idle else
                             (f" use all {gpus} GPUs" if gpus > 1 else ""))
                          + f"; holds {total_max} concurrent requests")
                if req.max_usd_per_hour is not None and (
                        price is None or price * req.instance_count > req.max_usd_per_hour):
                    eligible = False
                    binding = "price"
                    reason += (f"; excluded: ${price * req.instance_count:.2f}/h over the "
                               f"${req.max_usd_per_hour:.2f}/h ceiling" if price is not None
                               else "; excluded: no known price under a price ceiling")
            serve_dtype = dtypes.activations
            if r.accelerator in NO_BF16 and serve_dtype == "bf16":
                serve_dtype = "fp16"
                if fits:
                    reason += "; served in fp16 (no bf16 on this GPU)"
            if r.accelerator in NO_BF16 and dtypes.weights == "fp8" and fits:
                fits = eligible = False
                binding = "dtype"
                reason = f"fp8 weights need an Ampere or newer GPU, not {r.accelerator}"
                total_max = 0
            options.append(Option(
                instance_type=r.instance_type,
                accelerator=r.accelerator,
                gpu_count=gpus,
                gpu_memory_bytes=int(r.memory_per_accelerator_bytes),
                usable_bytes_per_gpu=usable,
                tensor_parallel_degree=tp,
                model_copies=copies,
                instance_count=req.instance_count,
                dtype=serve_dtype,
                fits=fits,
                eligible=eligible,
                reason=reason,
                binding=binding,
                per_gpu_required_bytes=est.total_bytes,
                per_gpu={"weights_bytes": est.weights_bytes,
                         "kv_cache_bytes": est.kv_cache_bytes,
                         "overhead_bytes": est.overhead_bytes,
                         "usable_bytes": usable},
                concurrency_per_copy=per_copy,
                usd_per_hour=None if price is None else price * req.instance_count,
                price_source=r.price_source or "",
                max_concurrency=total_max,
            ))

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
        not_planned=not_planned, warnings=warnings,
    )


def _choose(options: list[Option], req: PlanRequest,
            context_error: str | None) -> tuple[Option | None, str]:
    """Rank in place (pandas sort) and pick: eligible first, priced before unpriced, cheapest,
    then the smaller tp (more model copies, fewer collectives), then the most headroom."""
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
            return None, (f"{len(fitting)} option(s) fit in memory but none meets the price "
                          f"ceiling ${req.max_usd_per_hour}/h; the cheapest fitting is "
                          f"{fitting[0].instance_type} (tp {fitting[0].tensor_parallel_degree})")
        bindings = sorted({o.binding for o in ranked if o.binding})
        largest = max(ranked, key=lambda o: o.gpu_memory_bytes * o.gpu_count)
        return None, (f"no option fits: constraints hit: {', '.join(bindings)}; even "
                      f"{largest.instance_type} fails ({largest.reason})")
    why = f"cheapest option that fits the workload: {best.instance_type}"
    why += f" with tp {best.tensor_parallel_degree}"
    if best.usd_per_hour is None:
        why += " (no known price; no priced option fits)"
    else:
        why += f" at ${best.usd_per_hour:.2f}/h"
        src = best.price_source
        if "uncertain" in src:
            why += f" (price uncertain: {src})"
    return best, why
