"""Memory as people read it: GB (10^9 bytes) in every table, line and report; exact bytes
only in JSON.

GB, not GiB: the users' notes, the worked example and the GPU makers' figures are decimal, and
a GPU sold as "24 GB" reads 24.1 GB from its driver's 23,028 MiB, where GiB would print 22.5
and look like memory gone missing. One unit everywhere, so two outputs never disagree.
"""

from __future__ import annotations

GB = 10**9
UNIT_NOTE = "GB = 10^9 bytes"



def gb(n: float | None, digits: int = 1, unit: bool = True) -> str:
    """'26.0 GB'; below 0.1 GB in MB ('0.4 MB'), so a tiny model does not read '0.0 GB';
    '-' when unknown."""
    if n is None:
        return "-"
    if unit and 0 < abs(n) < GB / 10:
        return f"{n / 1e6:,.1f} MB"
    return f"{n / GB:,.{digits}f}" + (" GB" if unit else "")
