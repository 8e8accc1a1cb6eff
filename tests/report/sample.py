"""Realistic run reports (typed RunReport objects) shared by the report tests and perf.

Numbers follow the sizing rules in REFERENCE.md for Llama-3.1-8B-Instruct in bf16 (8,030,261,248
parameters; KV 2 x 32 layers x 8 kv heads x 128 x 2 B = 131,072 B per token) with 4,096 tokens per
request and 8 concurrent requests, on the instances of instances-researched.csv. Each function
returns a fresh report, so a test may change it freely.
"""

from __future__ import annotations

import copy

from lmiflow.sizing.calibration import Fit
from lmiflow.sizing.latency import Efficiency
from lmiflow.sizing.memory import DTypeChoice, MemoryBreakdown
from lmiflow.sizing.planner import ModelSummary, Option, Plan, PlanRequest

from lmiflow.bench.gates import Check, Verdict
from lmiflow.bench.metrics import BenchResult, LatencyStats, LevelResult
from lmiflow.report.model import (
    LevelComparison,
    PredictedVsMeasured,
    ReportedModel,
    RunReport,
    SmokeTest,
    StepRecord,
    Versions,
)

GIB = 2**30
MIB = 2**20
T0 = 1_795_900_000.0  # 2026-11-29 19:46:40 UTC, the run's start (epoch seconds)

PARAMS = 8_030_261_248
KV_PER_TOKEN = 131_072
WEIGHTS = PARAMS * 2
KV_TOTAL = KV_PER_TOKEN * 4096 * 8
OVERHEAD = 2 * GIB
NCCL = 400_000_000  # extra per-GPU overhead at tensor parallel >= 2
# Percentiles need this many samples to mean something (DESIGN.md: say when they do not).
ENOUGH = {"p50": 2, "p90": 10, "p95": 20, "p99": 100}

_GPU_MIB = {
    "T4": 15_360,
    "A10G": 23_028,
    "L4": 23_034,
    "L40S": 46_068,
    "A100-40": 40_960,
    "A100-80": 81_920,
    "H100": 81_559,
}


def _option(instance: str, gpu: str, count: int, tp: int, price: float | None) -> Option:
    usable = int(_GPU_MIB[gpu] * MIB * 0.9)  # gpu_memory_utilization 0.9
    weights = WEIGHTS // tp
    kv = KV_TOTAL // tp
    overhead = OVERHEAD + (NCCL if tp > 1 else 0)
    required = weights + kv + overhead
    fits = required <= usable
    copies = count // tp
    per_request_kv = KV_PER_TOKEN * 4096 // tp
    max_conc = max(0, (usable - weights - overhead) // per_request_kv) * copies if fits else 0
    if fits:
        reason = f"fits: {required / GIB:.2f} GiB of {usable / GIB:.2f} GiB per GPU at TP {tp}"
        if price is None:
            reason += "; no price known"
    else:
        reason = (
            f"needs {required / GIB:.2f} GiB per GPU at TP {tp}, "
            f"{gpu} has {usable / GIB:.2f} GiB usable"
        )
    return Option(
        instance_type=instance,
        accelerator=f"NVIDIA {gpu}",
        gpu_count=count,
        gpu_memory_bytes=_GPU_MIB[gpu] * MIB,
        usable_bytes_per_gpu=usable,
        tensor_parallel_degree=tp,
        model_copies=copies,
        instance_count=1,
        dtype="bf16",
        fits=fits,
        eligible=fits,
        reason=reason,
        binding=None if fits else "kv_cache",
        per_gpu_required_bytes=required,
        per_gpu={
            "weights_bytes": weights,
            "kv_cache_bytes": kv,
            "overhead_bytes": overhead,
            "usable_bytes": usable,
        },
        concurrency_per_copy=8,
        usd_per_hour=price,
        price_source="aws-pricing-page" if price is not None else "unknown",
        max_concurrency=max_conc,
    )


def _plan() -> Plan:
    fitting = [
        _option("ml.g6e.xlarge", "L40S", 1, 1, 2.61),
        _option("ml.g6e.2xlarge", "L40S", 1, 1, 2.80),
        _option("ml.g6.12xlarge", "L4", 4, 2, 5.752),
        _option("ml.g5.12xlarge", "A10G", 4, 2, 7.09),
        _option("ml.g5.48xlarge", "A10G", 8, 2, 20.36),
        _option("ml.p4d.24xlarge", "A100-40", 8, 1, 37.688),
        _option("ml.p5.48xlarge", "H100", 8, 1, 113.068),
        _option("ml.p4de.24xlarge", "A100-80", 8, 1, None),
    ]
    failing = [
        _option("ml.g4dn.xlarge", "T4", 1, 1, 0.7364),
        _option("ml.g6.xlarge", "L4", 1, 1, 1.1267),
        _option("ml.g5.xlarge", "A10G", 1, 1, 1.4084),
        _option("ml.g5.2xlarge", "A10G", 1, 1, 1.515),
    ]
    assert all(o.fits for o in fitting) and not any(o.fits for o in failing)
    options = fitting + failing
    return Plan(
        model=ModelSummary(model_type="llama", architecture="LlamaForCausalLM", parameters=PARAMS,
                           active_parameters=PARAMS, parameter_source="safetensors",
                           kv_cache_bytes_per_token=KV_PER_TOKEN),
        request=PlanRequest(dtype="bf16", max_input_tokens=3840, max_output_tokens=256,
                            concurrency=8),
        dtypes=DTypeChoice(weights="bf16", kv_cache="bf16", activations="bf16"),
        memory=MemoryBreakdown(
            weights_bytes=WEIGHTS,
            kv_cache_bytes=KV_TOTAL,
            overhead_bytes=OVERHEAD,
            total_bytes=WEIGHTS + KV_TOTAL + OVERHEAD,
        ),
        options=options,
        chosen=copy.deepcopy(options[0]),
        chosen_reason=(
            "cheapest option that fits: ml.g6e.xlarge at $2.61/h (1 x L40S, TP 1); "
            "its price source is marked uncertain"
        ),
    )


SERVING_PROPERTIES = """\
engine=Python
option.model_id=meta-llama/Llama-3.1-8B-Instruct
option.revision=0e9e39f249a16976918f6564b8830bc894c89659
option.tensor_parallel_degree=1
option.rolling_batch=disable
option.async_mode=true
option.entryPoint=djl_python.lmi_vllm.vllm_async_service
option.max_rolling_batch_size=8
option.max_model_len=4096
option.dtype=bf16
option.gpu_memory_utilization=0.9
"""

FORMULAS = {
    "ttft_ms": "first non-empty token chunk − request start",
    "tpot_ms": "(E2E − TTFT) / (output tokens − 1), first token excluded",
    "itl_ms": "gaps between successive tokens (a chunk of k tokens counts as k gaps of gap/k)",
    "e2e_ms": "last chunk − request start",
    "output_tokens_per_s": "output tokens of the measured window / window length, warm-up excluded",
    "error_rate": "failed / attempted",
    "goodput_per_s": "requests meeting every latency gate / window length",
    "usd_per_1m_output_tokens": "usd_per_hour × instances / (output tokens/s × 3600) × 1e6",
}


def _dist(mean: float, p50: float, p90: float, p95: float, p99: float, n: int) -> LatencyStats:
    few = [stat for stat, need in ENOUGH.items() if n < need]
    return LatencyStats(mean=mean, p50=p50, p90=p90, p95=p95, p99=p99, n=n, few_samples=few)


def _level(
    c: int, n: int, errors: int, ttft: tuple, tpot: tuple, tok_s: float, price: float = 2.61
) -> LevelResult:
    ok = n - errors
    t_mean, t50, t90, t95, t99 = ttft
    p_mean, p50, p90, p95, p99 = tpot
    e2e = [t + 255 * p for t, p in zip(ttft, tpot, strict=True)]
    return LevelResult(
        concurrency=c,
        requests=n,
        completed=ok,
        errors=errors,
        error_rate=errors / n,
        ttft_ms=_dist(t_mean, t50, t90, t95, t99, ok),
        tpot_ms=_dist(p_mean, p50, p90, p95, p99, ok),
        itl_ms=_dist(p_mean, p50 * 0.98, p90 * 1.1, p95 * 1.2, p99 * 1.5, ok * 255),
        e2e_ms=_dist(*e2e, ok),
        output_tokens_per_s=tok_s,
        requests_per_min=tok_s / 256 * 60,
        goodput=tok_s / 256 * (ok / n),
        usd_per_1m_output_tokens=price / (tok_s * 3600) * 1e6,
    )


def _benchmark() -> BenchResult:
    return BenchResult(
        levels=[
            _level(1, 32, 0, (65.2, 62.0, 75.1, 80.3, 95.0), (22.4, 22.1, 22.9, 23.3, 24.0), 44.1),
            _level(
                8, 64, 0, (121.7, 110.4, 180.2, 205.9, 260.8), (25.9, 25.5, 27.8, 28.6, 31.0), 305.3
            ),
            _level(
                32,
                128,
                1,
                (412.5, 380.2, 720.4, 905.1, 1150.3),
                (38.7, 38.0, 44.2, 47.5, 52.1),
                781.9,
            ),
        ],
        formulas=dict(FORMULAS),
    )


def _baseline() -> BenchResult:
    return BenchResult(
        levels=[
            _level(1, 32, 0, (70.3, 68.1, 81.0, 88.2, 101.7), (23.8, 23.5, 24.4, 24.9, 26.0), 41.5),
            _level(
                8, 64, 0, (140.2, 131.0, 201.3, 230.0, 290.5), (27.9, 27.4, 30.1, 31.2, 34.0), 281.0
            ),
            _level(
                32,
                128,
                0,
                (470.8, 440.1, 810.7, 990.2, 1301.0),
                (41.2, 40.6, 47.0, 50.3, 56.9),
                735.4,
            ),
        ],
        formulas=dict(FORMULAS),
    )


def _check(
    metric: str,
    stat: str,
    op: str,
    threshold: float,
    observed: float,
    concurrency: int | None,
    kind: str = "slo",
    baseline: float | None = None,
) -> Check:
    passed = {
        "<": observed < threshold,
        "<=": observed <= threshold,
        ">": observed > threshold,
        ">=": observed >= threshold,
    }[op]
    margin = threshold - observed if op in ("<", "<=") else observed - threshold
    return Check(metric=metric, stat=stat, op=op, threshold=threshold, observed=observed,
                 passed=passed, margin=margin, concurrency=concurrency, kind=kind,
                 baseline=baseline)


def _gate(benchmark: BenchResult, baseline: BenchResult) -> Verdict:
    checks = []
    for level in benchmark.levels:
        c = level.concurrency
        checks.append(_check("ttft_ms", "p95", "<=", 1000.0, level.ttft_ms.p95, c))
        checks.append(_check("tpot_ms", "p95", "<=", 60.0, level.tpot_ms.p95, c))
        checks.append(_check("error_rate", "value", "<=", 0.01, level.error_rate, c))
    base32 = baseline.levels[-1].output_tokens_per_s
    checks.append(
        _check(
            "output_tokens_per_s",
            "value",
            ">=",
            round(base32 * 0.9, 2),
            benchmark.levels[-1].output_tokens_per_s,
            32,
            kind="regression",
            baseline=base32,
        )
    )
    return Verdict(passed=all(c.passed for c in checks), checks=checks)


_STEP_SECONDS = [
    ("fetch_config", 0.41, "config.json of meta-llama/Llama-3.1-8B-Instruct@0e9e39f"),
    ("compute_memory", 0.02, "weights 14.96 GiB, KV 4.00 GiB, overhead 2.00 GiB"),
    ("choose_instance", 0.05, "ml.g6e.xlarge, TP 1, 1 copy, $2.61/h (12 options, 8 fit)"),
    ("render_serving_properties", 0.01, "11 keys"),
    ("create_model", 1.9, "model lmiflow-llama31-8b-m-7f3a9c"),
    ("configure_endpoint", 0.8, "endpoint config lmiflow-llama31-8b-c-7f3a9c"),
    ("create_endpoint", 412.6, "candidate lmiflow-llama31-8b-c-7f3a9c InService"),
    ("smoke_test", 1.84, "passed: 32 tokens"),
    ("benchmark", 182.3, "3 levels, 224 requests, 1 error"),
    ("gate", 0.01, "13 checks, 13 passed"),
    ("promote", 520.4, "blue/green ALL_AT_ONCE to lmiflow-llama31-8b"),
]


def _steps(
    fail_at: str | None = None, stop_after: str | None = None, fail_summary: str = ""
) -> list[StepRecord]:
    steps, t, state = [], T0, "completed"
    for name, seconds, summary in _STEP_SECONDS:
        if state == "completed" and name == fail_at:
            steps.append(StepRecord(name=name, status="failed", seconds=seconds, started_at=t,
                                    summary=fail_summary))
            state = "skipped"
        elif state == "skipped":
            steps.append(StepRecord(name=name, status="skipped", seconds=0.0, started_at=None,
                                    summary="not run: an earlier step failed"))
        else:
            steps.append(StepRecord(name=name, status="completed", seconds=seconds, started_at=t,
                                    summary=summary))
        t += seconds + 0.35  # Prefect's own time between tasks
        if name == stop_after:
            break
    return steps


def _versions() -> Versions:
    return Versions(
        lmiflow="0.1.0",
        prefect="3.4.25",
        lmi_image="0.33.0-lmi15.0.0-cu128",
        model_revision="0e9e39f249a16976918f6564b8830bc894c89659",
    )


def _base(status: str) -> RunReport:
    return RunReport(
        lmiflow_version="0.1.0",
        run_id="4b1f0a6e-52f1-4a8e-9a3c-2d9c1e7b8f10",
        started_at="2026-11-29T19:46:40+00:00",
        finished_at="2026-11-29T20:06:42+00:00",
        status=status,
        endpoint="lmiflow-llama31-8b",
        candidate_endpoint="lmiflow-llama31-8b-c-7f3a9c",
        target="sagemaker",
        model=ReportedModel(
            id="meta-llama/Llama-3.1-8B-Instruct",
            revision="0e9e39f249a16976918f6564b8830bc894c89659",
            model_type="llama",
            architecture="LlamaForCausalLM",
            num_layers=32,
            num_kv_heads=8,
            parameters=PARAMS,
            active_parameters=PARAMS,
            kv_cache_bytes_per_token=KV_PER_TOKEN,
        ),
        steps=_steps(),
        plan=_plan(),
        serving_properties=SERVING_PROPERTIES,
        image_uri=(
            "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.33.0-lmi15.0.0-cu128"
        ),
        smoke_test=SmokeTest(
            passed=True,
            output="The capital of France is Paris. It is known for the Eiffel Tower, the "
            "Louvre and its cafés.",
            seconds=1.84,
        ),
        benchmark=_benchmark(),
        baseline=_baseline(),
        versions=_versions(),
        config={"name": "lmiflow-llama31-8b",
                "model": {"id": "meta-llama/Llama-3.1-8B-Instruct"}},
    )


def _error(predicted: float, measured: float) -> float:
    return (predicted - measured) / measured * 100


def _calibration() -> PredictedVsMeasured:
    """The benchmark's closed-loop levels next to the plan's prediction for the L40S."""
    return PredictedVsMeasured(
        accelerator="NVIDIA L40S", engine="vllm", tensor_parallel_degree=1,
        image_version="0.33.0-lmi15.0.0-cu128",
        fit="vllm factors calibrated from 3 benchmark record(s)", fit_records=3,
        levels=[LevelComparison(concurrency=c, input_tokens=512, output_tokens=128,
                                predicted_ttft_ms=pt, measured_ttft_ms=mt,
                                ttft_error_pct=_error(pt, mt), predicted_tpot_ms=pp,
                                measured_tpot_ms=mp, tpot_error_pct=_error(pp, mp),
                                calibrated=True)
                for c, pt, mt, pp, mp in ((1, 50.0, 62.0, 24.0, 20.0),
                                          (32, 400.0, 380.2, 30.0, 32.5))],
        recorded=2, store="s3://lmiflow-bucket/lf/calibration.json",
        refit=Fit(accelerator="NVIDIA L40S", engine="vllm", records=5,
                  efficiency=Efficiency(memory=0.7, compute=0.45, step_overhead_ms=1.2,
                                        request_overhead_ms=6.0, allreduce_latency_ms=0.05),
                  mape_before={"ttft_ms": 12.5, "tpot_ms": 14.0},
                  mape_after={"ttft_ms": 6.0, "tpot_ms": None},
                  fitted_at="2026-11-29T20:05:00+00:00"))


def full_report() -> RunReport:
    """A promoted run: every step completed, gate passed against SLOs and the baseline."""
    report = _base("promoted")
    report.gate = _gate(report.benchmark, report.baseline)
    report.calibration = _calibration()
    assert report.gate.passed
    return report


def rejected_report() -> RunReport:
    """The gate failed (a tight TTFT SLO): candidate deleted, production untouched."""
    report = _base("rejected")
    gate = _gate(report.benchmark, report.baseline)
    level = report.benchmark.levels[-1]
    gate.checks.insert(0, _check("ttft_ms", "p99", "<=", 800.0, level.ttft_ms.p99, 32))
    gate.passed = False
    report.gate = gate
    report.steps = _steps(fail_at="gate", fail_summary="1 of 14 checks failed: ttft_ms p99")
    report.steps[-1].summary = "not run: the gate failed"
    report.failed_step = "gate"
    report.error = "gate failed: ttft_ms p99 1150.3 > 800 at concurrency 32"
    return report


def failed_early_report() -> RunReport:
    """create_endpoint failed: plan and serving.properties exist, nothing after them does."""
    report = _base("failed")
    report.steps = _steps(
        fail_at="create_endpoint",
        fail_summary="candidate Failed: CUDA out of memory while loading weights",
    )
    report.failed_step = "create_endpoint"
    report.error = (
        "Endpoint lmiflow-llama31-8b-c-7f3a9c status Failed: FailureReason: The primary "
        "container for production variant AllTraffic did not pass the ping health check. "
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.96 GiB"
    )
    report.smoke_test = None
    report.benchmark = None
    report.gate = None
    report.baseline = None
    report.finished_at = "2026-11-29T19:53:40+00:00"
    return report


def failed_at_start_report() -> RunReport:
    """fetch_config failed: no plan, no serving.properties, no image."""
    report = failed_early_report()
    report.steps = _steps(
        fail_at="fetch_config", fail_summary="config.json not found for meta-llama/Llama-3.1-8B"
    )
    report.failed_step = "fetch_config"
    report.error = "RepositoryNotFoundError: 404 Client Error for meta-llama/Llama-3.1-8B"
    report.candidate_endpoint = None
    report.model = ReportedModel(id="meta-llama/Llama-3.1-8B", revision=None)
    report.plan = None
    report.serving_properties = None
    report.image_uri = None
    report.finished_at = "2026-11-29T19:46:41+00:00"
    return report


def planned_report() -> RunReport:
    """A dry run: stops after render_serving_properties, creates nothing."""
    report = _base("planned")
    report.steps = _steps(stop_after="render_serving_properties")
    report.candidate_endpoint = None
    report.smoke_test = None
    report.benchmark = None
    report.gate = None
    report.baseline = None
    report.finished_at = "2026-11-29T19:46:41+00:00"
    return report
