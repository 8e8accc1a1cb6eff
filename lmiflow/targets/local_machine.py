"""This machine as a catalog row, so the local target plans exactly like SageMaker, described
as it is: the GPUs nvidia-smi sees with the memory free on them, else the CPU cores this
process may use and the RAM actually available (MemAvailable, under any cgroup limit), not
what is installed. It has no hourly price, so no price or cost is shown for it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from lmiflow.sizing.catalog import CPU, local_instance_row
from lmiflow.sizing.memory import GiB, MiB
from lmiflow.sizing.units import gb


def detect() -> dict:
    """nvidia-smi instead of torch.cuda: planning must not import torch (1-2 s) for one fact."""
    cores = _cores()
    ram, installed, limit = available_ram()
    gpus = _nvidia_gpus()
    if gpus:
        name = gpus[0][0]
        total = min(t for _, t, _ in gpus)
        free = min(f for _, _, f in gpus)
        return local_instance_row(
            name, len(gpus), min(total, free), cores, round(installed / GiB, 1),
            memory_source=f"nvidia-smi: {gb(free)} free of {gb(total)} per GPU")
    return local_instance_row(
        CPU, 1, ram, cores, round(installed / GiB, 1),
        memory_source=f"{cores} CPU core(s), {gb(ram)} RAM available of {gb(installed)}"
                      + (f" (cgroup limit {gb(limit)})" if limit else ""))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _nvidia_gpus() -> list[tuple[str, int, int]]:
    """(name, total bytes, free bytes) per GPU; empty without a working nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True).stdout
        rows = [line.rsplit(",", 2) for line in out.strip().splitlines() if line.count(",") >= 2]
        return [(n.strip(), int(float(t)) * MiB, int(float(f)) * MiB) for n, t, f in rows]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


def available_ram(meminfo: str = "/proc/meminfo", cgroup: str = "/sys/fs/cgroup"
                  ) -> tuple[int, int, int | None]:
    """(available, installed, cgroup limit or None) in bytes. Available is what a new process
    can take without swapping: MemAvailable, and no more than the cgroup limit leaves."""
    info = _meminfo(meminfo)
    installed = info.get("MemTotal") or _sysconf_bytes()
    available = info.get("MemAvailable", installed)
    limit, used = _cgroup_memory(Path(cgroup))
    if limit is not None and limit < installed:
        available = min(available, max(0, limit - (used or 0)))
    else:
        limit = None
    return available, installed, limit


def _meminfo(path: str) -> dict[str, int]:
    out = {}
    try:
        for line in Path(path).read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def _cgroup_memory(root: Path) -> tuple[int | None, int | None]:
    """(limit, usage) of this process's cgroup: v2 memory.max / memory.current, else v1."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes",
                                    "memory/memory.usage_in_bytes")):
        try:
            text = (root / limit_file).read_text().strip()
        except OSError:
            continue
        if not text.isdigit():
            return None, None  # "max": no limit
        try:
            usage = int((root / usage_file).read_text().strip())
        except (OSError, ValueError):
            usage = None
        return int(text), usage
    return None, None


def _sysconf_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0
