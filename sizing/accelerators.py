"""Accelerator facts (configs/accelerators.csv): what bounds a decode step and a prefill.

One row per accelerator model, joined to the instance catalog by its `accelerator` name.
Throughput figures are *dense* datasheet peaks (sparse figures are twice as large and no LLM
engine reaches them); bandwidth is the HBM/GDDR datasheet figure; `interconnect_gbps` is per
GPU and per direction, which is what a ring all-reduce moves. Every row names its source.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel

DEFAULT_ACCELERATORS = Path(__file__).resolve().parents[1] / "configs" / "accelerators.csv"


class AcceleratorError(ValueError):
    pass


class Accelerator(BaseModel):
    name: str
    architecture: str
    compute_capability: float | None
    memory_bandwidth_gbps: float
    fp16_tflops: float
    bf16_tflops: float | None
    fp8_tflops: float | None
    supports_bf16: bool
    supports_fp8: bool
    interconnect: Literal["pcie", "nvlink", "neuronlink"]
    interconnect_gbps: float | None
    smi_pattern: str
    source: str
    note: str = ""

    def peak_tflops(self, compute_dtype: str) -> float:
        """Dense tensor peak for the GEMMs' input dtype (fp8 only where the GPU has fp8 cores)."""
        if compute_dtype == "fp8" and self.supports_fp8 and self.fp8_tflops:
            return self.fp8_tflops
        if compute_dtype == "bf16" and self.bf16_tflops:
            return self.bf16_tflops
        return self.fp16_tflops


def _opt(text: str) -> float | None:
    return float(text) if text.strip() else None


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> dict[str, Accelerator]:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    out: dict[str, Accelerator] = {}
    for r in df.to_dict("records"):
        try:
            out[r["accelerator"]] = Accelerator(
                name=r["accelerator"], architecture=r["architecture"],
                compute_capability=_opt(r["compute_capability"]),
                memory_bandwidth_gbps=float(r["memory_bandwidth_gbps"]),
                fp16_tflops=float(r["fp16_tflops"]),
                bf16_tflops=_opt(r["bf16_tflops"]),
                fp8_tflops=_opt(r["fp8_tflops"]),
                supports_bf16=r["supports_bf16"].lower() == "true",
                supports_fp8=r["supports_fp8"].lower() == "true",
                interconnect=r["interconnect"],
                interconnect_gbps=_opt(r["interconnect_gbps"]),
                smi_pattern=r["smi_pattern"], source=r["source"], note=r["note"])
        except (KeyError, ValueError) as exc:
            raise AcceleratorError(f"{path}: row {r.get('accelerator')!r}: {exc}") from None
    return out


def load_accelerators(path: str | Path | None = None) -> dict[str, Accelerator]:
    p = Path(path) if path else DEFAULT_ACCELERATORS
    if not p.is_file():
        raise AcceleratorError(f"accelerator facts {p} not found")
    return _load(str(p), p.stat().st_mtime)


def facts_for(name: str, table: dict[str, Accelerator]) -> Accelerator | None:
    """The catalog's name exactly, else the row whose pattern matches a driver-reported name
    (`nvidia-smi` says "NVIDIA A100-SXM4-40GB", the catalog "NVIDIA A100 40GB")."""
    if name in table:
        return table[name]
    for acc in table.values():
        if acc.smi_pattern and re.search(acc.smi_pattern, name):
            return acc
    return None
