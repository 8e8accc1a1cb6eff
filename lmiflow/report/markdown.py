"""The report as Markdown (report.md). No images: the plots live in report.html.

Tables are rendered here rather than with ``DataFrame.to_markdown``: that needs ``tabulate``
(not a dependency) and escapes neither ``|`` nor HTML in cells.
"""

from __future__ import annotations

import re

from lmiflow.report.document import Block, Bullets, Code, Para, Plot, Section, Table, fence
from lmiflow.report.model import RunReport
from lmiflow.report.sections import build_sections, title

_TAG_START_RE = re.compile(r"<(?=[A-Za-z/!?])")


def _text(text: str) -> str:
    # Markdown viewers render raw HTML: escape every "<" that could open a tag, comment or
    # processing instruction, so a model id cannot inject markup; "<=" stays readable.
    return _TAG_START_RE.sub("&lt;", text)


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _block(block: Block) -> str:
    if isinstance(block, Para):
        text = _text(block.text)
        return f"**{text}**" if block.strong else text
    if isinstance(block, Table):
        lines = [
            "| " + " | ".join(_cell(h) for h in block.headers) + " |",
            "|" + "|".join(" --- " for _ in block.headers) + "|",
        ]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Code):
        bar = fence(block.text)
        return f"{bar}{block.lang}\n{block.text.rstrip(chr(10))}\n{bar}"
    if isinstance(block, Bullets):
        return "\n".join(f"- {_text(item)}" for item in block.items)
    if isinstance(block, Plot):
        return f"_Plot in report.html: {block.alt}._"
    raise TypeError(f"unknown block {block!r}")


def render_section(section: Section) -> str:
    """One section with its heading (a step's artifact shows the section the report will)."""
    return "\n\n".join([f"## {_text(section.title)}", *(_block(b) for b in section.blocks)])


def render_markdown(report: RunReport) -> str:
    parts = [f"# {_text(title(report))}"]
    parts += [render_section(section) for section in build_sections(report)]
    return "\n\n".join(parts) + "\n"
