"""The report as one self-contained HTML page (report.html): inline CSS, plots as data: PNGs,
no script, and a Content-Security-Policy that would block anything else even if escaping
failed."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping

from lmiflow.report.document import NOT_RUN, Block, Bullets, Code, Para, Plot, Table, fmt
from lmiflow.report.model import RunReport
from lmiflow.report.sections import build_sections, title

STATUS_COLOURS = {
    "promoted": "#1a7f37",
    "planned": "#0969da",
    "rejected": "#bc4c00",
    "failed": "#cf222e",
}
CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1f2328;
background:#f6f8fa;line-height:1.45}
main{max-width:1200px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:1.6em;margin:0 0 .3em}h2{font-size:1.25em;border-bottom:1px solid #d0d7de;
padding-bottom:.3em;margin-top:1.8em}
nav a{margin-right:1em;color:#0969da;text-decoration:none;font-size:.9em}
.badge{display:inline-block;color:#fff;border-radius:1em;padding:.15em .8em;font-weight:600;
font-size:.95em;vertical-align:middle}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}tr:nth-child(even) td{background:#fbfcfd}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:10px;overflow-x:auto;font-size:.85em;
white-space:pre-wrap;word-break:break-word}
img.plot{display:block;max-width:100%;height:auto;margin:.8em 0;border:1px solid #eaeef2}
p.strong{font-weight:600}.ok{color:#1a7f37;font-weight:700}.bad{color:#cf222e;font-weight:700}
.skip{color:#8c959f}footer{color:#57606a;font-size:.8em;margin-top:2em}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

# The Markdown keeps the emoji marks; in HTML they become coloured text symbols, which every
# font has (headless Chromium and many Linux desktops lack a colour-emoji font).
_MARKS = {
    "✅": '<span class="ok">✔</span>',
    "❌": '<span class="bad">✘</span>',
    "⏭": '<span class="skip">–</span>',
}


def _looks_numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace("$", "").replace(" †", "").replace("%", "")
    try:
        float(stripped)
    except ValueError:
        return False
    return True


def _text(text: str) -> str:
    out = html.escape(text)
    for mark, span in _MARKS.items():
        out = out.replace(mark, span)
    return out


def _cell(text: str) -> str:
    return f'<td class="num">{_text(text)}</td>' if _looks_numeric(text) else \
        f"<td>{_text(text)}</td>"


def _block(block: Block, plots: Mapping[str, bytes | None]) -> str:
    if isinstance(block, Para):
        return f'<p class="strong">{_text(block.text)}</p>' if block.strong else \
            f"<p>{_text(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_text(h)}</th>" for h in block.headers)
        body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in block.rows)
        return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>")
    if isinstance(block, Code):
        return f"<pre><code>{html.escape(block.text)}</code></pre>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_text(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Plot):
        png = plots.get(block.name)
        if not png:
            return f"<p>{_text(block.alt)}: {NOT_RUN}</p>"
        data = base64.b64encode(png).decode("ascii")
        return (f'<img class="plot" id="plot-{_text(block.name)}" alt="{_text(block.alt)}" '
                f'src="data:image/png;base64,{data}">')
    raise TypeError(f"unknown block {block!r}")


def render_html(report: RunReport, plots: Mapping[str, bytes | None] | None = None) -> str:
    if plots is None:
        from lmiflow.report.plots import all_plots

        plots = all_plots(report)
    esc = html.escape
    sections = build_sections(report)
    colour = STATUS_COLOURS.get(report.status, "#57606a")
    nav = "".join(f'<a href="#{s.anchor}">{esc(s.title.split(":")[0])}</a>' for s in sections)
    body = []
    for s in sections:
        inner = "\n".join(_block(b, plots) for b in s.blocks)
        body.append(f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>\n{inner}</section>')
    head = title(report)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(head)}</title>\n<style>{CSS}</style></head>\n<body><main>\n"
        f'<h1>{esc(head)} <span class="badge" style="background:{colour}">{esc(report.status)}'
        f"</span></h1>\n<nav>{nav}</nav>\n"
        + "\n".join(body)
        + f"\n<footer>lmiflow {esc(fmt(report.lmiflow_version))} · run "
        f"{esc(fmt(report.run_id))} · finished {esc(fmt(report.finished_at))}"
        "</footer>\n</main></body></html>\n"
    )
