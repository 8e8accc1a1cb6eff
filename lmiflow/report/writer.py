"""Write one run's report.json, report.md and report.html.

The RunReport is dumped once, redacted once, and every file is made from that redacted copy,
so no renderer can show a secret the JSON hides. Each file is written atomically: a reader
never sees half a report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmiflow.redact import redact
from lmiflow.report.html_page import render_html
from lmiflow.report.markdown import render_markdown
from lmiflow.report.model import RunReport


def _finite(obj: Any) -> Any:
    """NaN/inf become null (json.dumps would write invalid JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def render_json(report: RunReport) -> str:
    """report.json's text: the model's field order, two-space indent."""
    return json.dumps(_finite(report.to_json_dict()), indent=2, ensure_ascii=False) + "\n"


def redacted(report: RunReport) -> RunReport:
    """The copy every file is made from (the caller's report is not modified)."""
    return RunReport.model_validate(redact(report.to_json_dict()))


def report_plots(report: RunReport) -> dict[str, bytes | None]:
    """The plots of ``report``'s redacted copy: what report.html embeds. Drawing them is most
    of a report's cost (about 0.6 s); a caller that also needs them elsewhere (the deploy's
    Markdown artifact) draws them once here and passes them to write_report."""
    from lmiflow.report.plots import all_plots

    return all_plots(redacted(report))


def write_report(report: RunReport, out_dir: Path,
                 plots: Mapping[str, bytes | None] | None = None) -> dict[str, Path]:
    """Redact ``report`` and write report.json, report.md and report.html into ``out_dir``.

    Returns the paths by kind ("json", "md", "html"). The caller's report is not modified.
    ``plots``: report_plots(report), when the caller has drawn them already.
    """
    safe = redacted(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {"json": render_json(safe), "md": render_markdown(safe),
             "html": render_html(safe, plots)}
    paths = {kind: out_dir / f"report.{kind}" for kind in texts}
    for kind, path in paths.items():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(texts[kind], encoding="utf-8")
        tmp.replace(path)
    return paths
