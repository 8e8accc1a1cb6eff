"""Calibration: predicted vs measured latency per benchmark level, and the efficiency factors
fitted from those records per (accelerator, engine).

A record keeps the prediction's inputs (`LatencyInputs`), so a fit re-runs the latency model
with candidate factors and compares with what was measured. The fit minimises the squared log
error of TTFT and TPOT p50 over a family's records, plus a weak pull toward the uncalibrated
defaults so that few records move only the factors they inform (a family benchmarked only at
tp 1 keeps the default all-reduce cost). Pure: the store's file lives outside sizing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone

from lmiflow.sizing.accelerators import Accelerator, facts_for
from lmiflow.sizing.latency import (
    ENGINE_EFFICIENCY,
    Efficiency,
    LatencyInputs,
    default_efficiency,
    latency_inputs,
    predict,
)
from lmiflow.sizing.memory import DTypeChoice
from lmiflow.sizing.model_spec import ModelSpec
from lmiflow.sizing.planner import Calibration, Option, efficiency_for
from pydantic import BaseModel, Field

# Factor: (lower, upper) bounds the search keeps to: outside them a fit explains noise, not
# hardware (no engine reaches 100 % of bandwidth: memory-copy benchmarks on HBM and GDDR top
# out near 90 % of the datasheet figure; a 50 ms step overhead is a broken server).
BOUNDS: dict[str, tuple[float, float]] = {
    "memory": (0.2, 0.92),
    "compute": (0.1, 1.0),
    "step_overhead_ms": (0.0, 50.0),
    "request_overhead_ms": (0.0, 2000.0),
    "allreduce_latency_ms": (0.0, 1.0),
    "sync": (0.0, 1.0),
}
# The pull toward the defaults: PRIOR_WEIGHT x ln((x + eps) / (x0 + eps))^2 per factor, against
# ln(predicted / measured)^2 per measurement. eps keeps overheads that default to ~0 movable.
PRIOR_WEIGHT = 0.1
PRIOR_EPS = {"memory": 0.0, "compute": 0.0, "step_overhead_ms": 0.5,
             "request_overhead_ms": 1.0, "allreduce_latency_ms": 0.005, "sync": 0.05}
SWEEPS = 6
GOLDEN = (math.sqrt(5) - 1) / 2


class CalibrationRecord(BaseModel):
    """One benchmark level: what the planner predicted and what the benchmark measured (p50)."""

    recorded_at: str
    run: str = Field(description="Where it came from: a report, a run id, a published page.")
    model: str
    accelerator: str
    engine: str
    image_version: str | None = None
    dtype: str
    kv_cache_dtype: str
    tensor_parallel_degree: int
    concurrency: int = Field(description="Benchmark level: requests in flight, whole endpoint.")
    inputs: LatencyInputs = Field(description="Prediction inputs for one model copy.")
    predicted_ttft_ms: float
    predicted_tpot_ms: float
    predicted_calibrated: bool
    measured_ttft_ms: float | None
    measured_tpot_ms: float | None


class Fit(BaseModel):
    accelerator: str
    engine: str
    records: int
    efficiency: Efficiency
    mape_before: dict[str, float | None] = Field(description="Mean absolute % error of TTFT and "
                                                             "TPOT with the defaults.")
    mape_after: dict[str, float | None]
    fitted_at: str


class CalibrationStore(BaseModel):
    version: int = 1
    records: list[CalibrationRecord] = Field(default_factory=list)
    fits: list[Fit] = Field(default_factory=list)

    def efficiencies(self) -> dict[tuple[str, str], Efficiency]:
        return {(f.accelerator, f.engine): f.efficiency for f in self.fits}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def records_from_benchmark(
    levels: Iterable[Mapping], inputs_for: Callable[[int], LatencyInputs],
    efficiency: Efficiency, calibrated: bool,
    *, run: str, model: str, dtype: str, kv_cache_dtype: str, image_version: str | None,
) -> list[CalibrationRecord]:
    """Predicted vs measured rows, one per benchmark level.

    `levels` are `lmiflow bench --json` levels (concurrency, ttft_ms.p50, tpot_ms.p50);
    `inputs_for(concurrency)` gives the prediction inputs of one copy at that level."""
    out = []
    for lv in levels:
        c = int(lv["concurrency"])
        inp = inputs_for(c)
        p = predict(inp, efficiency)
        ttft = (lv.get("ttft_ms") or {}).get("p50")
        tpot = (lv.get("tpot_ms") or {}).get("p50")
        if ttft is None and tpot is None:
            continue  # a level with no successful request measured nothing
        out.append(CalibrationRecord(
            recorded_at=_now(), run=run, model=model, accelerator=inp.accelerator,
            engine=inp.engine, image_version=image_version, dtype=dtype,
            kv_cache_dtype=kv_cache_dtype, tensor_parallel_degree=inp.tp, concurrency=c,
            inputs=inp, predicted_ttft_ms=p.ttft_ms, predicted_tpot_ms=p.tpot_ms,
            predicted_calibrated=calibrated, measured_ttft_ms=ttft, measured_tpot_ms=tpot))
    return out


def records_for_option(
    spec: ModelSpec, dtypes: DTypeChoice, option: Option, engine: str,
    accelerators: Mapping[str, Accelerator], calibration: Calibration,
    levels: Iterable[Mapping], input_tokens: int, output_tokens: int,
    *, run: str, model: str, image_version: str | None,
) -> list[CalibrationRecord]:
    """Records for a benchmark of a deployed plan option: each level's requests spread over
    every copy of every instance, as the planner assumed. Empty for an accelerator without
    facts (nothing was predicted)."""
    facts = facts_for(option.accelerator, accelerators)
    eff, fitted_from = efficiency_for(facts, engine, calibration)
    if facts is None or eff is None:
        return []
    copies = option.model_copies * option.instance_count
    base = latency_inputs(spec, dtypes, facts, engine, option.tensor_parallel_degree,
                          input_tokens, output_tokens, 1)

    def inputs_for(concurrency: int) -> LatencyInputs:
        return base.model_copy(update={"concurrency": math.ceil(concurrency / copies)})

    return records_from_benchmark(levels, inputs_for, eff, fitted_from > 0, run=run,
                                  model=model, dtype=option.dtype,
                                  kv_cache_dtype=dtypes.kv_cache, image_version=image_version)


def side_by_side(records: Iterable[CalibrationRecord]) -> list[dict[str, float | int | None]]:
    """Predicted vs measured per level, as a report shows them (error in % of measured)."""
    def err(pred: float, meas: float | None) -> float | None:
        return None if not meas else (pred - meas) / meas * 100

    return [{"concurrency": r.concurrency,
             "predicted_ttft_ms": r.predicted_ttft_ms, "measured_ttft_ms": r.measured_ttft_ms,
             "ttft_error_pct": err(r.predicted_ttft_ms, r.measured_ttft_ms),
             "predicted_tpot_ms": r.predicted_tpot_ms, "measured_tpot_ms": r.measured_tpot_ms,
             "tpot_error_pct": err(r.predicted_tpot_ms, r.measured_tpot_ms),
             "calibrated": r.predicted_calibrated}
            for r in records]


# How one record's factors follow from the fitted ones (a fit across interconnects keeps each
# record's own all-reduce cost); None: the fitted factors as they are.
PerRecord = Callable[[CalibrationRecord, Efficiency], Efficiency] | None


def _pairs(records: list[CalibrationRecord], eff: Efficiency, per_record: PerRecord = None
           ) -> list[tuple[str, float, float]]:
    out = []
    for r in records:
        p = predict(r.inputs, per_record(r, eff) if per_record else eff)
        if r.measured_ttft_ms:
            out.append(("ttft_ms", p.ttft_ms, r.measured_ttft_ms))
        # TPOT means nothing for one-token outputs.
        if r.measured_tpot_ms and r.inputs.output_tokens > 1:
            out.append(("tpot_ms", p.tpot_ms, r.measured_tpot_ms))
    return out


def mape(records: list[CalibrationRecord], eff: Efficiency) -> dict[str, float | None]:
    """Mean absolute percentage error per metric."""
    errs: dict[str, list[float]] = {"ttft_ms": [], "tpot_ms": []}
    for metric, pred, meas in _pairs(records, eff):
        errs[metric].append(abs(pred - meas) / meas * 100)
    return {m: (sum(v) / len(v) if v else None) for m, v in errs.items()}


def _to_unit(name: str, value: float) -> float:
    lo, hi = BOUNDS[name]
    return (min(max(value, lo), hi) - lo) / (hi - lo)


def _from_unit(name: str, u: float) -> float:
    lo, hi = BOUNDS[name]
    return lo + u * (hi - lo)


def _objective(records: list[CalibrationRecord], eff: Efficiency, prior: Efficiency,
               names: tuple[str, ...], per_record: PerRecord) -> float:
    err = sum(math.log(pred / meas) ** 2 for _, pred, meas in _pairs(records, eff, per_record))
    pull = 0.0
    for name in names:
        eps = PRIOR_EPS[name]
        pull += math.log((getattr(eff, name) + eps) / (getattr(prior, name) + eps)) ** 2
    return err + PRIOR_WEIGHT * pull


def fit(records: list[CalibrationRecord], prior: Efficiency,
        names: tuple[str, ...] = tuple(BOUNDS), per_record: PerRecord = None) -> Efficiency:
    """Coordinate descent, a golden-section search per factor (of `names`) within its
    bounds."""
    current = prior.model_copy()
    for _ in range(SWEEPS):
        for name in names:
            def f(u: float, name: str = name, base: Efficiency = current) -> float:
                return _objective(records, base.model_copy(
                    update={name: _from_unit(name, u)}), prior, names, per_record)

            a, b = 0.0, 1.0
            c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
            fc, fd = f(c), f(d)
            for _ in range(24):
                if fc < fd:
                    b, d, fd = d, c, fc
                    c = b - GOLDEN * (b - a)
                    fc = f(c)
                else:
                    a, c, fc = c, d, fd
                    d = a + GOLDEN * (b - a)
                    fd = f(d)
            best = (a + b) / 2
            if f(best) < f(_to_unit(name, getattr(current, name))):
                current = current.model_copy(update={name: _from_unit(name, best)})
    return Efficiency.model_validate(current.model_dump())


def prior_for(records: list[CalibrationRecord]) -> Efficiency | None:
    """The uncalibrated factors a family starts from (None for an engine we have no model of)."""
    r = records[0]
    if r.engine not in ENGINE_EFFICIENCY:
        return None
    return default_efficiency(r.engine, r.inputs.interconnect)


def refit(store: CalibrationStore) -> CalibrationStore:
    """A fit for every (accelerator, engine) that has records."""
    groups: dict[tuple[str, str], list[CalibrationRecord]] = {}
    for r in store.records:
        groups.setdefault((r.accelerator, r.engine), []).append(r)
    fits = []
    for key, recs in sorted(groups.items()):
        prior = prior_for(recs)
        if prior is None:
            continue
        eff = fit(recs, prior)
        fits.append(Fit(accelerator=key[0], engine=key[1], records=len(recs), efficiency=eff,
                        mape_before=mape(recs, prior), mape_after=mape(recs, eff),
                        fitted_at=_now()))
    return store.model_copy(update={"fits": fits})
