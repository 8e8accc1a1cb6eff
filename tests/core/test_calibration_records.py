"""After the benchmark: each measured level next to what the plan predicted for it, appended to
the target's calibration store. Pure lifecycle, against an in-memory target: which levels are
compared, with which inputs and factors, what is stored, and why nothing is on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from lmiflow.sizing.catalog import CPU, catalog_with, local_instance_row
from lmiflow.sizing.latency import Efficiency, default_efficiency, predict
from lmiflow.sizing.model_spec import parse_model_config, read_config_file
from lmiflow.sizing.planner import PlanRequest, plan

from lmiflow import lifecycle
from lmiflow.bench.metrics import BenchResult, BenchSettings, LatencyStats, LengthStats, LevelResult
from lmiflow.calibration_store import add_records, parse_store
from tests.core.memory_target import MemoryTarget

MODELS = Path(__file__).resolve().parents[2] / "configs" / "models"
SPEC = parse_model_config(read_config_file(MODELS / "llama-3.1-8b"))
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.33.0-lmi15.0.0-cu128"
SLOW = Efficiency(memory=0.4, compute=0.3, step_overhead_ms=2, request_overhead_ms=20,
                  allreduce_latency_ms=0.05)


def two_g5(calibration=None):
    """2 x ml.g5.12xlarge at tp 1: 8 copies of the model, one per A10G."""
    return plan(SPEC, PlanRequest(max_input_tokens=2048, max_output_tokens=512, concurrency=16,
                                  instance_type="ml.g5.12xlarge", tensor_parallel_degree=1,
                                  instance_count=2), calibration=calibration)


def level(c, ttft, tpot, *, rate=None, prompt=1000.0, output=250.0) -> LevelResult:
    return LevelResult(concurrency=c, rate_rps=rate, requests=8,
                       ttft_ms=LatencyStats(p50=ttft), tpot_ms=LatencyStats(p50=tpot),
                       input_length=LengthStats(n=8, mean=prompt),
                       output_length=LengthStats(n=8, mean=output))


def bench(*levels) -> BenchResult:
    return BenchResult(levels=list(levels),
                       settings=BenchSettings(input_tokens=2048, max_new_tokens=512))


def record(target, p, b):
    return lifecycle.record_calibration(target, SPEC, p, b, run="run-1",
                                        model_id="meta-llama/Llama-3.1-8B", image_uri=IMAGE)


def test_each_measured_closed_loop_level_is_compared_and_appended():
    t = MemoryTarget()
    b = bench(level(1, 120.0, 30.0), level(16, None, None), level(32, 400.0, 41.0),
              level(64, 900.0, 60.0, rate=2.0))
    out = record(t, two_g5(), b)
    assert [lv.concurrency for lv in out.levels] == [1, 32]
    assert out.notes == [
        "concurrency 16: no successful request, nothing measured",
        "2 requests/s (open loop) not compared: its concurrency is a cap, not the load"]
    assert (out.accelerator, out.engine, out.tensor_parallel_degree) == ("NVIDIA A10G", "vllm", 1)
    assert out.image_version == "0.33.0-lmi15.0.0-cu128"
    assert (out.fit, out.fit_records) == ("uncalibrated vllm defaults", 0)
    stored = parse_store(t.calibration, "mem")
    assert out.recorded == 2 and out.store == "mem://calibration.json"
    assert [r.concurrency for r in stored.records] == [1, 32]
    r = stored.records[1]
    assert (r.run, r.model, r.image_version) == ("run-1", "meta-llama/Llama-3.1-8B",
                                                 "0.33.0-lmi15.0.0-cu128")
    # 32 requests over 8 copies, with the lengths the benchmark really sent, not the config's
    assert (r.inputs.concurrency, r.inputs.input_tokens, r.inputs.output_tokens) == (4, 1000, 250)
    assert (out.levels[1].input_tokens, out.levels[1].output_tokens) == (1000, 250)
    # A10Gs talk over PCIe: the vLLM defaults for a PCIe GPU predicted it, uncalibrated
    expected = predict(r.inputs, default_efficiency("vllm", "pcie"))
    row = out.levels[1]
    assert row.predicted_tpot_ms == pytest.approx(expected.tpot_ms)
    assert row.measured_tpot_ms == 41.0 and row.calibrated is False
    assert row.ttft_error_pct == pytest.approx((expected.ttft_ms - 400.0) / 400.0 * 100)
    # the store refit on what it holds: what the next plan of this family uses
    assert out.refit is not None and (out.refit.accelerator, out.refit.records) == (
        "NVIDIA A10G", 2)
    assert stored.fits == [out.refit]


def test_a_run_appends_to_what_other_runs_recorded():
    t = MemoryTarget()
    record(t, two_g5(), bench(level(1, 120.0, 30.0)))
    out = record(t, two_g5(), bench(level(8, 180.0, 33.0), level(32, 400.0, 41.0)))
    stored = parse_store(t.calibration, "mem")
    assert [r.concurrency for r in stored.records] == [1, 8, 32]
    assert out.recorded == 2 and out.refit.records == 3


def test_the_prediction_uses_the_factors_the_plan_used_not_the_store_as_it_is_now():
    p = two_g5({("NVIDIA A10G", "vllm"): (SLOW, 3)})
    t = MemoryTarget()
    # another run refitted the store since this run planned
    add_records(t, lifecycle.predicted_vs_measured(
        SPEC, two_g5(), bench(level(1, 10.0, 5.0)), run="other", model_id="m",
        image_uri=None)[0])
    out = record(t, p, bench(level(4, 150.0, 35.0)))
    assert (out.fit, out.fit_records) == ("vllm factors calibrated from 3 benchmark record(s)", 3)
    r = parse_store(t.calibration, "mem").records[-1]
    assert r.predicted_calibrated is True and out.levels[0].calibrated is True
    assert r.predicted_tpot_ms == pytest.approx(predict(r.inputs, SLOW).tpot_ms)


def test_on_a_cpu_nothing_is_predicted_so_nothing_is_recorded():
    cpu = catalog_with([local_instance_row(CPU, 1, 64 * 10**9, 4)])
    p = plan(SPEC, PlanRequest(max_input_tokens=128, max_output_tokens=32, concurrency=1,
                               engine="local"), cpu)
    t = MemoryTarget()
    out = record(t, p, bench(level(1, 900.0, 200.0)))
    assert out.notes == ["no latency prediction for CPU (no accelerator facts): nothing "
                         "compared or recorded"]
    assert out.levels == [] and out.recorded == 0 and out.store is None
    assert t.calibration is None  # the store was not even read


def test_a_local_gpu_is_recorded_under_its_catalog_name_with_the_local_engine():
    # nvidia-smi's name for the GPU; the accelerator table knows it as "NVIDIA A100 40GB"
    gpu = catalog_with([local_instance_row("NVIDIA A100-SXM4-40GB", 1, 40 * 10**9, 8)])
    p = plan(SPEC, PlanRequest(max_input_tokens=128, max_output_tokens=32, concurrency=1,
                               engine="local"), gpu)
    t = MemoryTarget()
    out = lifecycle.record_calibration(t, SPEC, p, bench(level(1, 90.0, 40.0)), run="r",
                                       model_id="m", image_uri=None)
    assert (out.accelerator, out.engine, out.recorded, out.notes) == (
        "NVIDIA A100 40GB", "local", 1, [])
    (r,) = parse_store(t.calibration, "mem").records
    assert (r.accelerator, r.engine, r.image_version) == ("NVIDIA A100 40GB", "local", None)


def test_a_target_with_nowhere_to_keep_a_store_says_so():
    class NoStore(MemoryTarget):
        def update_calibration(self, change):
            return None

    out = record(NoStore(), two_g5(), bench(level(1, 120.0, 30.0)))
    assert [lv.concurrency for lv in out.levels] == [1] and out.recorded == 0
    assert out.notes == ["not kept: the target has nowhere to keep a calibration store"]


@pytest.mark.parametrize("uri, version", [
    (IMAGE, "0.33.0-lmi15.0.0-cu128"),
    ("registry:5000/lmi@sha256:abc", "registry:5000/lmi@sha256:abc"),
    (None, None),
])
def test_the_image_version_is_its_tag(uri, version):
    _, out = lifecycle.predicted_vs_measured(SPEC, two_g5(), bench(), run="r", model_id="m",
                                             image_uri=uri)
    assert out.image_version == version
