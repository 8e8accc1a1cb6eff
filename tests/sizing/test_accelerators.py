"""The accelerator facts file: optional figures, errors that name the file and row, and a file
edited while the process runs."""

import os
from pathlib import Path

import pytest
from lmiflow.sizing.accelerators import (
    DEFAULT_ACCELERATORS,
    AcceleratorError,
    load_accelerators,
)

from tests.sizing.test_planner_latency_boundaries import gpu

HEADER = DEFAULT_ACCELERATORS.read_text().splitlines()[0]


def write(path: Path, *rows: str, mtime: int = 1_000_000) -> Path:
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    os.utime(path, (mtime, mtime))
    return path


TOY = "TOY,Toy,{cc},100,50,{bf16},,true,false,nvlink,300,TOY,test,"


def test_blank_optional_figures_are_none_and_the_rest_are_read(tmp_path):
    facts = load_accelerators(write(tmp_path / "a.csv", TOY.format(cc="", bf16="")))["TOY"]
    assert facts.compute_capability is None and facts.bf16_tflops is None
    assert facts.fp8_tflops is None and facts.interconnect_gbps == 300.0
    assert (facts.memory_bandwidth_gbps, facts.fp16_tflops) == (100.0, 50.0)
    assert facts.peak_tflops("bf16") == 50.0  # no bf16 figure: the fp16 peak
    assert facts.supports_bf16 and not facts.supports_fp8


def test_a_file_edited_since_it_was_read_is_read_again(tmp_path):
    path = write(tmp_path / "a.csv", TOY.format(cc="8.0", bf16="50"), mtime=1_000_000)
    assert load_accelerators(path)["TOY"].compute_capability == 8.0
    write(path, TOY.format(cc="9.0", bf16="50"), mtime=2_000_000)
    assert load_accelerators(path)["TOY"].compute_capability == 9.0


def test_a_missing_file_and_a_bad_row_are_named(tmp_path):
    with pytest.raises(AcceleratorError, match=r"accelerator facts .*nope\.csv not found"):
        load_accelerators(tmp_path / "nope.csv")
    bad = write(tmp_path / "bad.csv", TOY.format(cc="x", bf16="50"))
    with pytest.raises(AcceleratorError, match=r"bad\.csv: row 'TOY': "):
        load_accelerators(bad)


def test_no_path_reads_the_bundled_facts():
    assert "NVIDIA A10G" in load_accelerators()
    assert load_accelerators(None) == load_accelerators(DEFAULT_ACCELERATORS)


def test_peak_is_the_figure_for_the_gemms_dtype_and_fp8_only_with_fp8_cores():
    h = gpu().model_copy(update={"fp16_tflops": 100.0, "bf16_tflops": 110.0,
                                 "fp8_tflops": 200.0, "supports_fp8": True})
    assert (h.peak_tflops("fp8"), h.peak_tflops("bf16"), h.peak_tflops("fp16")) == (
        200.0, 110.0, 100.0)
    no_fp8_cores = h.model_copy(update={"supports_fp8": False})
    assert no_fp8_cores.peak_tflops("fp8") == 100.0
