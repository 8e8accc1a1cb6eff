"""The SageMaker instance catalog (configs/instances.csv) as a pandas DataFrame.

Memory per accelerator is what the driver reports (MiB x 2^20), not the marketing GB: an
"A10G 24 GB" holds 23,028 MiB. Prices carry their source and date; a missing price is allowed
and such options sort after priced ones.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

DEFAULT_CATALOG = Path(__file__).resolve().parents[1] / "configs" / "instances.csv"
COLUMNS = (
    "instance_type", "family", "accelerator", "accelerator_count",
    "memory_per_accelerator_bytes", "memory_source", "vcpu", "host_memory_gib",
    "usd_per_hour", "price_region", "price_source", "price_date", "planned",
    "not_planned_reason",
)


class CatalogError(ValueError):
    pass


@lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> pd.DataFrame:
    text = ("instance_type", "price_region", "price_source", "price_date",
            "not_planned_reason", "memory_source")
    df = pd.read_csv(path, dtype=dict.fromkeys(text, str))
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CatalogError(f"{path}: missing columns {', '.join(missing)}")
    df["planned"] = df["planned"].astype(str).str.lower().eq("true")
    for col in text[1:]:
        df[col] = df[col].fillna("")
    df["usd_per_hour"] = pd.to_numeric(df["usd_per_hour"], errors="coerce")
    return df


def load_catalog(path: str | Path | None = None) -> pd.DataFrame:
    """The catalog, cached per file version (the planner is called often in sweeps)."""
    p = Path(path) if path else DEFAULT_CATALOG
    if not p.is_file():
        raise CatalogError(f"instance catalog {p} not found")
    return _load(str(p), p.stat().st_mtime)


# The local target's accelerator when there is no GPU: system RAM holds weights and KV cache,
# the cores compute. Memory then bounds nothing a person plans by, so no "holds N" is claimed.
CPU = "CPU"


def local_instance_row(accelerator: str, count: int, memory_bytes: int,
                       vcpu: int | None = None, host_memory_gib: float | None = None,
                       memory_source: str = "this machine") -> dict:
    """The machine lmiflow runs on, as a catalog row: the local target plans like SageMaker.

    No price: nothing is billed by the hour, and a $0.00 would put a meaningless point on every
    price and cost figure."""
    return {
        "instance_type": "local",
        "family": "local",
        "accelerator": accelerator,
        "accelerator_count": count,
        "memory_per_accelerator_bytes": memory_bytes,
        "memory_source": memory_source,
        "vcpu": vcpu,
        "host_memory_gib": host_memory_gib,
        "usd_per_hour": float("nan"),
        "price_region": "",
        "price_source": "this machine is not billed by the hour",
        "price_date": "",
        "planned": True,
        "not_planned_reason": "",
    }


def catalog_with(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(COLUMNS))
