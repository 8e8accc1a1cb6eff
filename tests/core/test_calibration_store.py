"""The calibration store: absent means empty, writes are atomic, appends go through the target
(the local one keeps the file `lmiflow calibrate` reads) and refit, and a damaged store never
stops planning."""

import json

import pytest
from lmiflow.sizing.calibration import CalibrationRecord, CalibrationStore
from lmiflow.sizing.latency import LatencyInputs, default_efficiency, predict

from lmiflow.calibration_store import (
    CalibrationStoreError,
    add_records,
    default_store_path,
    fitted,
    load_store,
    planning_calibration,
    save_store,
)
from lmiflow.targets.local import LocalTarget


def a_record(measured_scale: float, concurrency: int) -> CalibrationRecord:
    inp = LatencyInputs(
        accelerator="NVIDIA L4", engine="vllm", tp=1, bandwidth_gbps=300, peak_tflops=121,
        interconnect="pcie", link_gbps=31.5, layers=32, hidden=4096, q_dim=4096,
        dense_bytes_per_gpu=15e9, flops_per_token=15e9, kv_bytes_per_token_layer_gpu=4096,
        input_tokens=512, output_tokens=128, concurrency=concurrency)
    p = predict(inp, default_efficiency("vllm", "pcie"))
    return CalibrationRecord(
        recorded_at="t", run="r", model="m", accelerator="NVIDIA L4", engine="vllm",
        dtype="bf16", kv_cache_dtype="bf16", tensor_parallel_degree=1,
        concurrency=concurrency, inputs=inp, predicted_ttft_ms=p.ttft_ms,
        predicted_tpot_ms=p.tpot_ms, predicted_calibrated=False,
        measured_ttft_ms=p.ttft_ms * measured_scale, measured_tpot_ms=p.tpot_ms * measured_scale)


def test_absent_store_is_empty_and_not_created(tmp_path):
    path = tmp_path / "state" / "calibration.json"
    assert load_store(path) == CalibrationStore()
    assert not path.exists() and not path.parent.exists()


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "calibration.json"
    store = CalibrationStore(records=[a_record(1.2, 4)])
    save_store(path, store)
    assert load_store(path) == store
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]  # no temp file left


def test_add_records_appends_to_the_local_targets_file_and_refits(tmp_path, monkeypatch):
    monkeypatch.setenv("LMIFLOW_STATE_DIR", str(tmp_path / "state"))
    target = LocalTarget()
    add_records(target, [a_record(1.3, 1)])
    store, where = add_records(target, [a_record(1.3, 8), a_record(1.3, 16)])
    # the file `lmiflow calibrate` and `lmiflow plan` read by default
    assert where == str(default_store_path()) == str(tmp_path / "state" / "calibration.json")
    assert len(store.records) == 3 and load_store(where) == store
    (eff, n), = fitted(store).values()
    assert n == 3 and eff.memory < default_efficiency("vllm", "pcie").memory
    assert planning_calibration(target) == (fitted(store), None)


@pytest.mark.parametrize("text", ["{not json", json.dumps({"records": [{"run": 1}]})])
def test_damaged_store_is_an_error_naming_the_file(tmp_path, text):
    path = tmp_path / "calibration.json"
    path.write_text(text)
    with pytest.raises(CalibrationStoreError, match=r"calibration\.json is not a calibration"):
        load_store(path)
    calibration, problem = planning_calibration(LocalTarget(state_dir=tmp_path))
    assert calibration == {} and problem.startswith("calibration not used: ")
    assert str(path) in problem
    with pytest.raises(Exception, match="calibration"):  # an append never overwrites it
        add_records(LocalTarget(state_dir=tmp_path), [a_record(1.0, 1)])
    assert path.read_text() == text
