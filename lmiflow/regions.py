"""AWS region names, from botocore's partition data (botocore/data/partitions.json).

Why not a hand-written pattern: partitions keep being added (aws-eusc's `eusc-de-east-1`,
`eu-isoe-west-1`, two-digit region numbers), and botocore ships each partition's own
`regionRegex` with every release. The partition also says which ARN prefix (`arn:aws`,
`arn:aws-cn`, `arn:aws-us-gov`, ...) a region's resources use.
"""

from __future__ import annotations

import functools
import re


@functools.lru_cache(maxsize=1)
def _partitions() -> tuple[tuple[str, re.Pattern[str], frozenset[str]], ...]:
    from botocore.loaders import create_loader

    data = create_loader().load_data("partitions")
    return tuple((p["id"], re.compile(p["regionRegex"]), frozenset(p.get("regions", {})))
                 for p in data["partitions"])


def partition_of(region: str) -> str | None:
    """The partition id (aws, aws-cn, aws-us-gov, ...) of a region name, or None when the name
    matches no partition's pattern. Pseudo-regions such as `aws-global` are not regions."""
    if region != region.lower() or "global" in region:
        return None
    for pid, pattern, _ in _partitions():
        if pattern.fullmatch(region):
            return pid
    return None


def known_regions() -> list[str]:
    """Region names botocore lists (a name can be valid before botocore lists it)."""
    return sorted(r for _, _, regions in _partitions() for r in regions if "global" not in r)
