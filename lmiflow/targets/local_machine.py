"""This machine as a catalog row, so the local target plans exactly like SageMaker."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from lmiflow.sizing.memory import GiB, MiB


def detect() -> dict:
    """The local accelerator: NVIDIA GPUs (nvidia-smi) if present, else system RAM.

    nvidia-smi instead of torch.cuda: planning must not import torch (1-2 s) for one fact."""
    from lmiflow.sizing.catalog import local_instance_row

    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True).stdout
            gpus = [line.rsplit(",", 1) for line in out.strip().splitlines() if "," in line]
            if gpus:
                name = gpus[0][0].strip()
                mib = min(int(float(m)) for _, m in gpus)
                return local_instance_row(name, len(gpus), mib * MiB, os.cpu_count())
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    total = _meminfo_bytes("MemTotal")
    return local_instance_row("CPU (system RAM)", 1, total, os.cpu_count(),
                              round(total / GiB, 1))


def _meminfo_bytes(key: str, path: str = "/proc/meminfo") -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
