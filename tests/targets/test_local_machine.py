"""The local target describes this machine as it is: GPUs with the memory free on them, else
the CPU cores and the RAM available (not installed), no price, and no memory-derived "holds N"
on a CPU."""

from __future__ import annotations

import os
import stat

from lmiflow.sizing.catalog import CPU, catalog_with, local_instance_row
from lmiflow.sizing.memory import GiB, MiB
from lmiflow.sizing.planner import PlanRequest, plan

from lmiflow.targets import local_machine

MEMINFO = "MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:   12000000 kB\n"


def test_available_ram_is_memavailable_not_memtotal(tmp_path):
    (tmp_path / "meminfo").write_text(MEMINFO)
    avail, installed, limit = local_machine.available_ram(str(tmp_path / "meminfo"),
                                                          str(tmp_path / "no-cgroup"))
    assert (avail, installed, limit) == (12_000_000 * 1024, 32_000_000 * 1024, None)


def test_a_cgroup_limit_caps_what_is_available(tmp_path):
    (tmp_path / "meminfo").write_text(MEMINFO)
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "memory.max").write_text(f"{8 * GiB}\n")
    (cg / "memory.current").write_text(f"{3 * GiB}\n")
    avail, _, limit = local_machine.available_ram(str(tmp_path / "meminfo"), str(cg))
    assert (avail, limit) == (5 * GiB, 8 * GiB)
    (cg / "memory.max").write_text("max\n")
    assert local_machine.available_ram(str(tmp_path / "meminfo"), str(cg))[2] is None


def test_cpu_row_without_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    row = local_machine.detect()
    assert row["accelerator"] == CPU and row["accelerator_count"] == 1
    assert row["usd_per_hour"] != row["usd_per_hour"]  # NaN: no price
    assert "RAM available" in row["memory_source"]
    avail, installed, _ = local_machine.available_ram()
    assert row["memory_per_accelerator_bytes"] <= installed
    assert abs(row["memory_per_accelerator_bytes"] - avail) < installed / 10  # moves a little


def test_gpu_rows_take_the_memory_free_on_the_fullest_gpu(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA L4, 23034, 20000'\necho 'NVIDIA L4, 23034, 9000'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    row = local_machine.detect()
    assert (row["accelerator"], row["accelerator_count"]) == ("NVIDIA L4", 2)
    assert row["memory_per_accelerator_bytes"] == 9000 * MiB
    assert "free of" in row["memory_source"]


def test_a_cpu_plan_claims_no_price_and_no_concurrency_from_memory():
    from pathlib import Path

    from lmiflow.sizing.model_spec import parse_model_config, read_config_file

    models = Path(__file__).resolve().parents[2] / "configs" / "models"
    spec = parse_model_config(read_config_file(models / "phi-3-mini-4k"))
    cat = catalog_with([local_instance_row(CPU, 1, 20 * GiB, memory_source="2 cores")])
    p = plan(spec, PlanRequest(max_input_tokens=256, max_output_tokens=32, concurrency=4), cat)
    c = p.chosen
    assert c.usd_per_hour is None and c.usd_per_1m_output_tokens is None
    assert "holds" not in c.reason and "$" not in p.chosen_reason
    assert c.memory_source == "2 cores"
