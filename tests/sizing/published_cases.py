"""Published latency measurements (tests/sizing/published/latency.csv, sources in sources.csv)
as prediction cases: what the latency-model tests and perf/latency_accuracy.py compare with.

A "run" is one measured configuration (model, GPU, engine and version, tp, dtype, shape, load,
concurrency) from one source; a run can carry TTFT, TPOT or both, each at the statistic its
source reports (mean, p50, ...; "unstated" where the source does not say). SGLang and TGI runs
use vLLM's factors (same class of engine: CUDA graphs, paged attention, a Python scheduler);
LMDeploy's TurboMind uses TensorRT-LLM's (a C++ batching engine with its own kernels).
"""

from __future__ import annotations

import csv
import itertools
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lmiflow.sizing.accelerators import load_accelerators
from lmiflow.sizing.calibration import CalibrationRecord, fit, mape
from lmiflow.sizing.latency import LatencyInputs, default_efficiency, latency_inputs, predict
from lmiflow.sizing.memory import resolve_dtypes
from lmiflow.sizing.model_spec import parse_model_config, read_config_file

HERE = Path(__file__).resolve().parent / "published"
ROOT = Path(__file__).resolve().parents[2]
# engines measured in public data -> factors we model
ENGINE_FACTORS = {"sglang": "vllm", "tgi": "vllm", "lmdeploy": "trtllm"}
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


def _spec(name: str):
    for d in (ROOT / "configs" / "models" / name, HERE / name):
        if d.is_dir():
            return parse_model_config(read_config_file(d))
    raise FileNotFoundError(name)


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
                engine = ENGINE_FACTORS.get(row["engine"], row["engine"])
                inp = latency_inputs(spec, dtypes, accels[row["accelerator"]], engine,
                                     int(row["tp"]), int(row["input_tokens"]),
                                     int(row["output_tokens"]), int(row["concurrency"]))
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
