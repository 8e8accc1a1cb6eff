"""`lmiflow report-schema`: print the JSON Schema of report.json (the one shipped with lmiflow,
generated from lmiflow.report.model.RunReport), for validating reports in other tools."""

from __future__ import annotations

from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("report-schema", help="Print the JSON Schema of report.json.",
                              description=__doc__)
    p.set_defaults(run=run)


def run(args: Any) -> int:
    from lmiflow.report.model import shipped_schema_text

    print(shipped_schema_text(), end="")
    return 0
