"""Calibration records from a benchmark, the side-by-side rows a report shows, and refits per
(accelerator, engine)."""

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from lmiflow.sizing.accelerators import load_accelerators
from lmiflow.sizing.calibration import (
    CalibrationStore,
    fit,
    mape,
    prior_for,
    records_for_option,
    refit,
    side_by_side,
)
from lmiflow.sizing.latency import ALLREDUCE_LATENCY_MS, Efficiency, default_efficiency, predict
from lmiflow.sizing.model_spec import parse_model_config, read_config_file
from lmiflow.sizing.planner import PlanRequest, plan

MODELS = Path(__file__).resolve().parents[2] / "configs" / "models"
SPEC = parse_model_config(read_config_file(MODELS / "llama-3.1-8b"))


def levels(*rows):
    """`lmiflow bench --json` levels: (concurrency, ttft p50, tpot p50)."""
    return [{"concurrency": c, "ttft_ms": {"p50": ttft, "p90": None},
             "tpot_ms": {"p50": tpot}} for c, ttft, tpot in rows]


def two_g5():
    p = plan(SPEC, PlanRequest(max_input_tokens=2048, max_output_tokens=512, concurrency=16,
                               instance_type="ml.g5.12xlarge", tensor_parallel_degree=1,
                               instance_count=2))
    return p, p.chosen


def record(option_plan, rows, calibration=None):
    p, option = option_plan
    return records_for_option(SPEC, p.dtypes, option, "vllm", load_accelerators(),
                              calibration or {}, levels(*rows), 1024, 256, run="run-1",
                              model="meta-llama/Llama-3.1-8B", image_version="0.33.0")


def test_one_record_per_measured_level_spread_over_every_copy():
    recs = record(two_g5(), [(1, 120.0, 30.0), (8, 180.0, 33.0), (16, None, None),
                             (32, 400.0, 41.0)])
    # The level with no successful request measured nothing and is skipped.
    assert [r.concurrency for r in recs] == [1, 8, 32]
    # 2 instances x 4 copies: level 32 puts 4 requests on each copy, level 8 one.
    assert [r.inputs.concurrency for r in recs] == [1, 1, 4]
    r = recs[-1]
    assert (r.accelerator, r.engine, r.tensor_parallel_degree) == ("NVIDIA A10G", "vllm", 1)
    assert (r.image_version, r.dtype, r.kv_cache_dtype) == ("0.33.0", "bf16", "bf16")
    assert (r.inputs.input_tokens, r.inputs.output_tokens) == (1024, 256)
    assert r.measured_ttft_ms == 400.0 and r.measured_tpot_ms == 41.0
    # g5 GPUs talk over PCIe: the vLLM defaults for a PCIe accelerator predicted it.
    assert r.predicted_tpot_ms == pytest.approx(
        predict(r.inputs, default_efficiency("vllm", "pcie")).tpot_ms)
    assert r.predicted_calibrated is False


def test_records_say_when_the_prediction_was_calibrated():
    slow = Efficiency(memory=0.4, compute=0.3, step_overhead_ms=2, request_overhead_ms=20,
                      allreduce_latency_ms=0.05)
    recs = record(two_g5(), [(4, 150.0, 35.0)], {("NVIDIA A10G", "vllm"): (slow, 3)})
    assert recs[0].predicted_calibrated is True
    assert recs[0].predicted_tpot_ms == pytest.approx(predict(recs[0].inputs, slow).tpot_ms)


def test_side_by_side_errors_are_percent_of_measured():
    recs = record(two_g5(), [(8, 200.0, 40.0)])
    row = side_by_side(recs)[0]
    assert row["concurrency"] == 8
    assert row["tpot_error_pct"] == pytest.approx((row["predicted_tpot_ms"] - 40.0) / 40.0 * 100)
    assert row["measured_ttft_ms"] == 200.0


def test_refit_fits_each_accelerator_and_engine_and_improves_its_error():
    # Measurements 40 % slower than the defaults predict, at three levels.
    recs = []
    for c in (1, 8, 32):
        r = record(two_g5(), [(c, 1.0, 1.0)])[0]
        recs.append(r.model_copy(update={"measured_ttft_ms": r.predicted_ttft_ms * 1.4,
                                         "measured_tpot_ms": r.predicted_tpot_ms * 1.4}))
    other = recs[0].model_copy(update={"engine": "tgi"})  # no model: kept, not fitted
    store = refit(CalibrationStore(records=[*recs, other]))
    assert [(f.accelerator, f.engine, f.records) for f in store.fits] == [
        ("NVIDIA A10G", "vllm", 3)]
    f = store.fits[0]
    assert f.mape_before["tpot_ms"] == pytest.approx(100 * 0.4 / 1.4, rel=1e-3)
    assert f.mape_after["tpot_ms"] < 5 and f.mape_after["ttft_ms"] < 5
    assert f.efficiency.memory < 0.75  # slower decode: less of the bandwidth reached
    assert store.efficiencies() == {("NVIDIA A10G", "vllm"): f.efficiency}


def test_a_level_with_only_ttft_measured_is_kept_and_stamped_in_utc():
    # one-token outputs measure a TTFT and no TPOT
    recs = record(two_g5(), [(4, 150.0, None)])
    assert [(r.measured_ttft_ms, r.measured_tpot_ms) for r in recs] == [(150.0, None)]
    assert datetime.fromisoformat(recs[0].recorded_at).utcoffset() == timedelta(0)


def test_factors_fitted_from_one_record_count_as_calibrated():
    recs = record(two_g5(), [(4, 150.0, 35.0)],
                  {("NVIDIA A10G", "vllm"): (default_efficiency("vllm", "pcie"), 1)})
    assert recs[0].predicted_calibrated is True


def test_side_by_side_row_has_every_figure_and_no_error_without_a_measurement():
    r = record(two_g5(), [(8, 1.0, 1.0)])[0].model_copy(update={
        "predicted_ttft_ms": 150.0, "measured_ttft_ms": 120.0,
        "predicted_tpot_ms": 30.0, "measured_tpot_ms": None})
    assert side_by_side([r]) == [{
        "concurrency": 8, "predicted_ttft_ms": 150.0, "measured_ttft_ms": 120.0,
        "ttft_error_pct": 25.0, "predicted_tpot_ms": 30.0, "measured_tpot_ms": None,
        "tpot_error_pct": None, "calibrated": False}]
    zero = r.model_copy(update={"measured_ttft_ms": 0.0})
    assert side_by_side([zero])[0]["ttft_error_pct"] is None


def test_mape_leaves_out_missing_measurements_and_tpot_of_one_token_outputs():
    r = record(two_g5(), [(8, 1.0, 1.0)])[0]
    eff = default_efficiency("vllm", "pcie")
    pred = predict(r.inputs, eff)
    # measured 25 % above the prediction: |p - 1.25 p| / 1.25 p = 20 %
    measured = r.model_copy(update={"measured_ttft_ms": pred.ttft_ms * 1.25,
                                    "measured_tpot_ms": pred.tpot_ms * 1.25})
    assert mape([measured], eff) == pytest.approx({"ttft_ms": 20.0, "tpot_ms": 20.0})
    no_tpot = measured.model_copy(update={"measured_tpot_ms": None})
    assert mape([no_tpot], eff)["tpot_ms"] is None
    one = measured.model_copy(update={"inputs": r.inputs.model_copy(
        update={"output_tokens": 1})})
    assert mape([one], eff)["tpot_ms"] is None
    two = measured.model_copy(update={"inputs": r.inputs.model_copy(
        update={"output_tokens": 2})})
    assert mape([two], eff)["tpot_ms"] is not None


def test_records_the_defaults_already_predict_keep_the_defaults():
    prior = default_efficiency("vllm", "pcie")
    recs = [r.model_copy(update={"measured_ttft_ms": r.predicted_ttft_ms,
                                 "measured_tpot_ms": r.predicted_tpot_ms})
            for r in record(two_g5(), [(1, 1.0, 1.0), (8, 1.0, 1.0)])]
    assert fit(recs, prior) == prior


def test_the_prior_of_an_nvlink_family_has_nvlinks_allreduce_cost():
    r = record(two_g5(), [(8, 1.0, 1.0)])[0]
    nvlink = r.model_copy(update={"inputs": r.inputs.model_copy(
        update={"interconnect": "nvlink"})})
    assert prior_for([nvlink]).allreduce_latency_ms == ALLREDUCE_LATENCY_MS["nvlink"] > 0
    assert prior_for([nvlink.model_copy(update={"engine": "tgi"})]) is None


def test_a_fit_stays_inside_the_bounds_a_real_engine_can_reach():
    # Measured 3x faster than the defaults predict: no engine reads memory at over 92 % of
    # the datasheet bandwidth, so the fit stops at the bound (within the search's resolution).
    prior = default_efficiency("vllm", "pcie")
    recs = [r.model_copy(update={"measured_ttft_ms": r.predicted_ttft_ms / 3,
                                 "measured_tpot_ms": r.predicted_tpot_ms / 3})
            for r in record(two_g5(), [(1, 1.0, 1.0), (8, 1.0, 1.0)])]
    eff = fit(recs, prior)
    assert 0.919 < eff.memory <= 0.92 and 0.999 < eff.compute <= 1.0
    # the fixed costs shrink but the pull toward the defaults keeps them from vanishing
    assert 0 < eff.step_overhead_ms < prior.step_overhead_ms
    assert 0 < eff.request_overhead_ms < prior.request_overhead_ms


def test_a_family_with_nothing_measured_keeps_the_defaults():
    # Failed levels: no TTFT, no TPOT. Only the pull toward the defaults is left to minimise.
    prior = default_efficiency("vllm", "pcie")
    recs = [r.model_copy(update={"measured_ttft_ms": None, "measured_tpot_ms": None})
            for r in record(two_g5(), [(1, 1.0, 1.0)])]
    assert fit(recs, prior) == prior
