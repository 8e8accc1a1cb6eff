"""The report as a small document (paragraphs, tables, code, bullets, plots) and the cell
formats its tables share, so the Markdown and HTML renderings cannot drift apart.

Cells are text, formatted to what each measurement supports; a value that is not there is "—".
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import Any

from lmiflow.sizing.units import gb as _gb

NOT_RUN = "not run"


@dataclass
class Para:
    text: str
    strong: bool = False


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Code:
    text: str
    lang: str = ""


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Plot:
    name: str
    alt: str


Block = Para | Table | Code | Bullets | Plot


@dataclass
class Section:
    anchor: str
    title: str
    blocks: list[Block] = field(default_factory=list)


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 100:
            return f"{value:,.1f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def gb(value: int | float | None) -> str:
    """Memory in GB (10^9 bytes), the unit of every human-facing output (sizing.units)."""
    return "—" if value is None else _gb(value, digits=2)


def usd(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"${value:,.{digits}f}"


def secs(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def mark(ok: bool | None) -> str:
    if ok is None:
        return "—"
    return "✅" if ok else "❌"


def verdict(passed: bool | None) -> str:
    if passed is None:
        return NOT_RUN
    return "✅ passed" if passed else "❌ failed"


def duration(start: str | None, end: str | None) -> str:
    try:
        seconds = dt.datetime.fromisoformat(str(end)) - dt.datetime.fromisoformat(str(start))
    except (TypeError, ValueError):
        return "—"
    return f"{seconds.total_seconds():,.1f} s"


def fence(text: str) -> str:
    """A code fence longer than any run of backticks inside the text."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)
