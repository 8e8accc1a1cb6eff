"""Published latency measurements (tests/sizing/published/latency.csv, sources in sources.csv)
as prediction cases: what the latency-model tests and perf/latency_accuracy.py compare with.

A "run" is one measured configuration (model, GPU, engine and version, tp, dtype, shape, load,
concurrency) from one source; a run can carry TTFT, TPOT or both, each at the statistic its
source reports (mean, p50, ...; "unstated" where the source does not say). SGLang has factors of
its own; TGI runs use vLLM's (same class of engine: CUDA graphs, paged attention, a Python
scheduler), NIM's and LMDeploy's TurboMind TensorRT-LLM's (C++ batching engines). A run's batch
slots are what its engine admits at most: the `max_batch` column where the source states it,
else the smaller of the engine's default and what the KV cache holds at 90 % memory utilization
(the planner's own memory estimate). Static-batch runs (load `static`, an offline harness) pay
no per-request serving cost.
"""

from __future__ import annotations

import csv
import functools
import itertools
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lmiflow.sizing.accelerators import load_accelerators
from lmiflow.sizing.calibration import CalibrationRecord, fit, mape
from lmiflow.sizing.catalog import load_catalog
from lmiflow.sizing.latency import (
    ALLREDUCE_LATENCY_MS,
    Efficiency,
    LatencyInputs,
    default_efficiency,
    engine_limits,
    latency_inputs,
    predict,
)
from lmiflow.sizing.memory import max_concurrency, per_gpu_estimate, resolve_dtypes
from lmiflow.sizing.model_spec import parse_model_config, read_config_file

HERE = Path(__file__).resolve().parent / "published"
ROOT = Path(__file__).resolve().parents[2]
# engines measured in public data -> factors we model
ENGINE_FACTORS = {"tgi": "vllm", "nim": "trtllm"}
GPU_MEMORY_UTILIZATION = 0.9
# Columns that make one run: a source's TTFT and TPOT under the same conditions share a run.
RUN_KEY = ("source", "model", "accelerator", "engine", "engine_version", "tp", "dtype",
           "kv_dtype", "input_tokens", "output_tokens", "load", "concurrency")
# The 47 points issue 14's acceptance bounds (test_latency.py) were set on; issue 22 adds the
# rest, whose error is reported cross-validated by publisher rather than held to those bounds.
ISSUE14_SOURCES = frozenset({"trtllm-v0.9", "nim-bench", "musgrave-a100", "accelmark-a100-8b",
                             "accelmark-a100-70b", "vllm-nightly"})
CORE = ("NVIDIA A100 40GB", "NVIDIA A100 80GB", "NVIDIA H100", "NVIDIA L40S")


@dataclass
class Run:
    ids: list[str]
    model: str
    accelerator: str
    engine: str
    dtype: str
    inputs: LatencyInputs
    measured: dict[str, float] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)
    load: str = "closed"  # closed: N clients, each sends on reply; static: one batch of N
    statistics: dict[str, str] = field(default_factory=dict)  # metric -> mean / p50 / ...
    publisher: str = ""  # the independence unit for leave-one-source-out


    @property
    def family(self) -> tuple[str, str, str]:
        return self.accelerator, self.inputs.engine, self.model

    def record(self) -> CalibrationRecord:
        return CalibrationRecord(
            recorded_at="published", run=self.ids[0], model=self.model,
            accelerator=self.accelerator, engine=self.inputs.engine, dtype="", kv_cache_dtype="",
            tensor_parallel_degree=self.inputs.tp, concurrency=self.inputs.concurrency,
            inputs=self.inputs, predicted_ttft_ms=0, predicted_tpot_ms=0,
            predicted_calibrated=False, measured_ttft_ms=self.measured.get("ttft_ms"),
            measured_tpot_ms=self.measured.get("tpot_ms"))


# GPU memory where the instance catalog has no instance of that GPU (datasheet figures).
DATASHEET_MEMORY = {"NVIDIA H200": 141e9, "NVIDIA A100 80GB": 80e9, "NVIDIA L40S": 48e9,
                    "NVIDIA H100": 80e9, "NVIDIA A100 40GB": 40e9, "NVIDIA A10G": 24e9}


@functools.cache
def acc_memory(accelerator: str) -> float:
    """Bytes of one GPU: the instance catalog's figure, else its datasheet's."""
    cat = load_catalog()
    rows = cat[cat["accelerator"] == accelerator]
    if len(rows):
        return float(rows["memory_per_accelerator_bytes"].iloc[0])
    return DATASHEET_MEMORY[accelerator]


def _spec(name: str):
    for d in (ROOT / "configs" / "models" / name, HERE / name):
        if d.is_dir():
            return parse_model_config(read_config_file(d))
    raise FileNotFoundError(name)


# Sources whose requests' lengths vary around the stated means (sources.csv says so: a
# dataset's prompts, or sampled lengths); the others send fixed lengths. A condition of the
# measurement, like `load`: clients with varying lengths drift out of step.
LENGTHS_VARY = frozenset({
    "llmperf-a10g",  # "llmperf with mean 550 input / 150 output tokens (lengths vary ...)"
    "gpustack-qwen3-8b-h100",  # "the ShareGPT dataset ... lengths vary per request"
    "vllm-blog-fp8kv",  # "~20k input / ~2k output tokens (+-15 %)"
    "accelmark-a100-8b", "accelmark-a100-70b", "accelmark-a100-80-8b",  # ShareGPT, serial
})


def _version(text: str) -> tuple[int, int] | None:
    try:
        major, minor = (int(x) for x in text.split(".")[:2])
    except ValueError:
        return None  # "nightly", "NIM 1.8.0" and the like
    return major, minor


def engine_family(row: dict[str, str]) -> str:
    """The factors a run is predicted with. TensorRT-LLM 1.x serves through its PyTorch
    backend by default (trtllm-serve: a Python executor loop around the kernels), the class of
    engine vLLM's factors describe; before 1.0, and behind NIM or LMI, it runs compiled
    TensorRT engines under the C++ executor."""
    version = _version(row["engine_version"])
    if row["engine"] == "trtllm" and version is not None and version >= (1, 0):
        return "vllm"
    return ENGINE_FACTORS.get(row["engine"], row["engine"])


def mixed_prefill(row: dict[str, str]) -> bool | None:
    """Whether the run's engine puts prefill chunks into steps with running decodes, where its
    version says so: vLLM's V1 engine (0.8.0 on, the default engine; chunked prefill always
    on) does, V0 (prefill-first steps unless chunked prefill is turned on) does not. Other
    engines: their family's default (None)."""
    version = _version(row["engine_version"])
    if row["engine"] != "vllm" or version is None:
        return None  # other engines, and "nightly" and the like: the family's default
    return version >= (0, 8)


def sources() -> dict[str, dict[str, str]]:
    """sources.csv by source id: publisher, date, what was measured and where it is."""
    with open(HERE / "sources.csv", newline="") as fh:
        return {row["source"]: row for row in csv.DictReader(fh)}


def runs(only: frozenset[str] | None = None) -> list[Run]:
    """Every run in latency.csv, or only those from the given source ids."""
    accels = load_accelerators()
    publishers = {k: v["publisher"] for k, v in sources().items()}
    out: dict[tuple, Run] = {}
    with open(HERE / "latency.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if only is not None and row["source"] not in only:
                continue
            key = tuple(row[k] for k in RUN_KEY)
            if key not in out:
                spec = _spec(row["model"])
                dtypes = resolve_dtypes(spec, row["dtype"], row["kv_dtype"])
                engine = engine_family(row)
                acc, tp = accels[row["accelerator"]], int(row["tp"])
                s_in, s_out = int(row["input_tokens"]), int(row["output_tokens"])
                conc = int(row["concurrency"])
                stated = (row.get("max_batch") or "").strip()
                if stated:
                    slots = int(stated)
                else:
                    usable = int(acc_memory(acc.name) * GPU_MEMORY_UTILIZATION)
                    est = per_gpu_estimate(spec, dtypes, tp, s_in + s_out // 2, conc)
                    held = max_concurrency(usable, est)
                    slots = max(1, min(engine_limits(engine)["max_batch"], held or conc))
                offline = row["load"] == "static"
                inp = latency_inputs(spec, dtypes, acc, engine, tp, s_in, s_out, conc,
                                     max_batch=slots).model_copy(update={
                                         "served": not offline,
                                         "mixed_prefill": mixed_prefill(row),
                                         "lengths_vary": row["source"] in LENGTHS_VARY})
                out[key] = Run([], row["model"], row["accelerator"], row["engine"],
                               row["dtype"], inp, load=row["load"],
                               publisher=publishers[row["source"]])
            run = out[key]
            if row["metric"] in run.measured:
                raise ValueError(f"{row['id']}: a second {row['metric']} for run {run.ids[0]}")
            run.ids.append(row["id"])
            run.measured[row["metric"]] = float(row["measured_ms"])
            run.statistics[row["metric"]] = row["statistic"]
            run.sources.add(row["source"])
    return list(out.values())


def comparisons(all_runs: list[Run]) -> list[dict]:
    """One row per published number: predicted (uncalibrated) vs measured."""
    rows = []
    for run in all_runs:
        p = predict(run.inputs, default_efficiency(run.inputs.engine, run.inputs.interconnect))
        for metric, measured in run.measured.items():
            predicted = getattr(p, metric)
            rows.append({"run": run, "metric": metric, "measured": measured,
                         "predicted": predicted,
                         "error_pct": (predicted - measured) / measured * 100})
    return rows


def uncalibrated_mape(rows: list[dict], metric: str, accelerators=CORE) -> tuple[float, int]:
    errs = [abs(r["error_pct"]) for r in rows
            if r["metric"] == metric and r["run"].accelerator in accelerators]
    return statistics.mean(errs), len(errs)


def calibrated_mape(all_runs: list[Run]) -> dict[str, dict[str, float]]:
    """Fit on 3 runs of one family (model x GPU x engine), for every choice of 3: error on
    those 3 (in-sample) and on the family's other runs (held out), averaged over families."""
    families: dict[tuple, list[Run]] = {}
    for run in all_runs:
        if "e2e_ms" not in run.measured:
            families.setdefault(run.family, []).append(run)
    result: dict[str, dict[str, list[float]]] = {"in_sample": {}, "held_out": {}}
    for members in families.values():
        if len(members) < 3:
            continue
        prior = default_efficiency(members[0].inputs.engine, members[0].inputs.interconnect)
        ins: dict[str, list[float]] = {}
        held: dict[str, list[float]] = {}
        for trio in itertools.combinations(range(len(members)), 3):
            fitted = [members[i].record() for i in trio]
            rest = [m.record() for i, m in enumerate(members) if i not in trio]
            eff = fit(fitted, prior)
            for metric, v in mape(fitted, eff).items():
                if v is not None:
                    ins.setdefault(metric, []).append(v)
            for metric, v in (mape(rest, eff) if rest else {}).items():
                if v is not None:
                    held.setdefault(metric, []).append(v)
        for name, per in (("in_sample", ins), ("held_out", held)):
            for metric, vals in per.items():
                result[name].setdefault(metric, []).append(statistics.mean(vals))
    return {name: {m: statistics.mean(v) for m, v in per.items()}
            for name, per in result.items()}


# The factors a fit across published runs moves: the engine family's efficiencies and fixed
# costs. The all-reduce cost per hop stays the interconnect's (a family's runs mix NVLink and
# PCIe, and few are multi-GPU); `sync` stays the engine's (few sources sweep concurrency).
CV_FACTORS = ("memory", "compute", "step_overhead_ms", "request_overhead_ms")


def _keep_interconnect(record: CalibrationRecord, eff: Efficiency) -> Efficiency:
    return eff.model_copy(update={"allreduce_latency_ms": ALLREDUCE_LATENCY_MS.get(
        record.inputs.interconnect, eff.allreduce_latency_ms)})


def fit_family(train: list[Run], engine: str) -> Efficiency:
    """The engine family's factors fitted to these runs (its defaults when there are none)."""
    prior = default_efficiency(engine, "nvlink", prior=True)
    records = [r.record() for r in train if r.inputs.engine == engine
               and "e2e_ms" not in r.measured]
    if not records:
        return prior
    return fit(records, prior, CV_FACTORS, _keep_interconnect)


def _errors(run: Run, eff: Efficiency) -> list[dict]:
    p = predict(run.inputs, _keep_interconnect(run.record(), eff))
    return [{"run": run, "metric": m, "measured": v, "predicted": getattr(p, m),
             "error_pct": (getattr(p, m) - v) / v * 100}
            for m, v in run.measured.items() if m != "tpot_ms" or run.inputs.output_tokens > 1]


def cross_validated(all_runs: list[Run]) -> list[dict]:
    """Leave one source out: for each source, the engine families' factors fitted on every
    other source's runs, then that source's runs predicted with them (never fitted to)."""
    rows = []
    for source in sorted({s for r in all_runs for s in r.sources}):
        held = [r for r in all_runs if source in r.sources]
        train = [r for r in all_runs if source not in r.sources]
        fitted = {e: fit_family(train, e) for e in {r.inputs.engine for r in held}}
        for run in held:
            for row in _errors(run, fitted[run.inputs.engine]):
                rows.append({**row, "held_out": source})
    return rows


def error_band(rows: list[dict], metric: str, low: float = 0.1, high: float = 0.9
               ) -> tuple[float, float]:
    """Measured / predicted at the low and high quantiles: a prediction p is likely in
    [p x low, p x high] (an 80 % interval with the defaults)."""
    ratios = sorted(r["measured"] / r["predicted"] for r in rows if r["metric"] == metric)
    qs = statistics.quantiles(ratios, n=100, method="inclusive")
    return qs[round(low * 100) - 1], qs[round(high * 100) - 1]


def calibrated_rows(all_runs: list[Run]) -> list[dict]:
    """Fit on 3 runs of one family (every choice of 3), the family's other runs predicted:
    what calibration from a deploy's benchmark leaves of the error."""
    families: dict[tuple, list[Run]] = {}
    for run in all_runs:
        if "e2e_ms" not in run.measured:
            families.setdefault(run.family, []).append(run)
    rows = []
    for members in families.values():
        if len(members) < 4:
            continue
        prior = default_efficiency(members[0].inputs.engine, members[0].inputs.interconnect)
        for trio in itertools.combinations(range(len(members)), 3):
            eff = fit([members[i].record() for i in trio], prior)
            for i, m in enumerate(members):
                if i not in trio:
                    p = predict(m.inputs, eff)
                    rows += [{"metric": k, "measured": v, "predicted": getattr(p, k)}
                             for k, v in m.measured.items()
                             if k != "tpot_ms" or m.inputs.output_tokens > 1]
    return rows


def band_of(rows: list[dict], metric: str) -> tuple[float, float] | None:
    """error_band rounded to 2 decimals, as ERROR_BAND holds it (None without the metric)."""
    if not any(r["metric"] == metric for r in rows):
        return None
    lo, hi = error_band(rows, metric)
    return round(lo, 2), round(hi, 2)


def summary(all_runs: list[Run]) -> dict:
    """What perf/latency_cv.py prints and tests/sizing/test_latency_cv.py holds the constants
    to: the cross-validated rows, the factors fitted on every source per engine family, and
    the error bands (uncalibrated: cross-validated; calibrated: held out from 3-run fits)."""
    rows = cross_validated(all_runs)
    cal = calibrated_rows(all_runs)
    return {
        "rows": rows, "calibrated_rows": cal,
        "fitted": {e: fit_family(all_runs, e) for e in sorted({r.inputs.engine
                                                                for r in all_runs})},
        "bands": {m: {"uncalibrated": band_of(rows, m), "calibrated": band_of(cal, m)}
                  for m in ("ttft_ms", "tpot_ms")},
    }
