"""The published reference data itself: every point names a source that sources.csv describes,
its conditions use the columns' closed vocabularies, and the loader refuses a run that would
silently carry two values of one metric."""

import csv
import shutil

import pytest

from tests.sizing import published_cases

METRICS = {"ttft_ms", "tpot_ms", "e2e_ms"}
STATISTICS = {"mean", "p50", "p90", "p99", "unstated"}
LOADS = {"closed", "static"}


def _rows() -> list[dict[str, str]]:
    with open(published_cases.HERE / "latency.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_point_has_a_described_source_and_known_conditions():
    rows = _rows()
    sources = published_cases.sources()
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["source"] in sources, r["id"]
        assert r["metric"] in METRICS and r["statistic"] in STATISTICS, r["id"]
        assert r["load"] in LOADS, r["id"]
        assert float(r["measured_ms"]) > 0 and int(r["concurrency"]) >= 1, r["id"]
        assert int(r["input_tokens"]) >= 1 and int(r["output_tokens"]) >= 1, r["id"]
    for name, src in sources.items():
        assert src["publisher"] and src["what"] and src["where"], name
    assert {r["source"] for r in rows} == set(sources)


def test_loader_reads_every_point_into_one_run_per_source_and_conditions():
    all_runs = published_cases.runs()
    assert sum(len(run.measured) for run in all_runs) == len(_rows())
    for run in all_runs:
        assert len(run.sources) == 1 and run.publisher
        assert set(run.statistics) == set(run.measured)


def test_a_second_value_of_one_metric_for_one_run_is_refused(tmp_path, monkeypatch):
    for name in ("latency.csv", "sources.csv"):
        shutil.copy(published_cases.HERE / name, tmp_path / name)
    rows = _rows()
    first = next(r for r in rows if r["metric"] == "ttft_ms")
    with open(tmp_path / "latency.csv", "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=list(first), lineterminator="\n").writerow(
            {**first, "id": first["id"] + "-again"})
    for d in published_cases.HERE.iterdir():  # config.json snapshots
        if d.is_dir():
            shutil.copytree(d, tmp_path / d.name)
    monkeypatch.setattr(published_cases, "HERE", tmp_path)
    with pytest.raises(ValueError, match="a second ttft_ms"):
        published_cases.runs()
