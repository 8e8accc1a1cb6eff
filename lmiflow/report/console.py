"""The run report as the terminal shows it when `lmiflow deploy` ends: the outcome first, the
steps, the gate, where the report is and what to run next. Plain lines of at most `width`
columns (a terminal, or 80 in a CI log): prose wraps at word boundaries with a hanging indent,
a number stays with its unit, and a command is never split."""

from __future__ import annotations

import re
import textwrap

from lmiflow.report.model import RunReport
from lmiflow.report.outcome import explain_check

STEP_MARKS = {"completed": "✓", "failed": "✗", "skipped": "·", "running": "…"}
STATUS_STYLES = {"promoted": "bold green", "rejected": "bold yellow", "planned": "bold"}
# A number and its unit (or "c=4", "tp 2") never end up on two lines.
_TOGETHER = re.compile(r"(?<=\d) (?=(?:GB|MB|ms|s|tokens/s|checks)\b|%)"
                       r"|(?<=\btp) (?=\d)|(?<=\bafter) (?=\d)")

Line = tuple[str, str | None]  # (text, rich style or None)


def wrap(text: str, width: int, indent: str = "", hang: str = "    ") -> list[str]:
    glued = _TOGETHER.sub("\u00a0", text)
    lines = textwrap.wrap(glued, width=max(40, width), initial_indent=indent,
                          subsequent_indent=hang, break_on_hyphens=False) or [indent]
    return [line.replace("\u00a0", " ") for line in lines]


def summary_lines(r: RunReport, cli: str, report_html: str, width: int = 80) -> list[Line]:
    out: list[Line] = []

    def para(text: str, indent: str = "", hang: str = "    ", style: str | None = None):
        out.extend((line, style) for line in wrap(text, width, indent, hang))

    oc = r.outcome
    para(oc.headline if oc else f"{r.status.upper()} {r.endpoint}",
         style=STATUS_STYLES.get(r.status, "bold red"))
    for reason in oc.reasons if oc else []:
        para(reason, indent="  ✗ ", hang="      ")
    for step in oc.next_steps if oc else []:
        para(f"next: {step}", indent="  ", hang="        ")

    out.append(("", None))
    name_w = max((len(s.name) for s in r.steps), default=0)
    lead = 4 + name_w + 1 + 8 + 2  # "  ✓ " name " 1234.5 s" "  "
    for s in r.steps:
        took = "" if s.status == "skipped" else f"{s.seconds:.1f} s"
        head = f"  {STEP_MARKS.get(s.status, '?')} {s.name:<{name_w}} {took:>8}  "
        style = "red" if s.status == "failed" else ("dim" if s.status == "skipped" else None)
        if not s.summary:
            out.append((head.rstrip(), style))
            continue
        lines = wrap(s.summary, width - lead, hang="")
        out.append((head + lines[0], style))
        out.extend((" " * lead + line, style) for line in lines[1:])

    if r.gate and r.gate.checks:
        failed = sum(not c.passed for c in r.gate.checks)
        out.append(("", None))
        out.append((f"gate: {'passed' if r.gate.passed else 'rejected'}, "
                    f"{len(r.gate.checks) - failed} of {len(r.gate.checks)} checks pass", None))
        for c in r.gate.checks:
            para(explain_check(c), indent=f"  {'✓' if c.passed else '✗'} {c.kind}: ",
                 hang="      ")
        for note in r.gate.notes:
            para(f"note: {note}", indent="  ", hang="      ")

    out.append(("", None))
    para(f"report: {report_html} (and report.json, report.md)", hang="  ")
    if r.status == "promoted":
        t = f" --target {r.target}"
        out += [("try it:", None), (f"  {cli} endpoints invoke {r.endpoint} 'Hello'{t}", None),
                ("remove it:", None), (f"  {cli} endpoints delete {r.endpoint}{t}", None)]
    if r.cleanup:
        para("removed the candidate: " + ", ".join(r.cleanup), hang="  ")
    return out

