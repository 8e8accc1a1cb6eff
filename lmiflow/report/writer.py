"""Write one run's report.json, report.md and a self-contained report.html.

The sections are built once as a small document model (paragraphs, tables, code blocks, plots)
and rendered twice, so the markdown and the HTML cannot drift apart. Every section copes with
its data missing (a run that failed early, a dry run): it then says "not run".

Markdown tables are rendered here rather than with ``DataFrame.to_markdown``: that needs
``tabulate`` (not a dependency) and escapes neither ``|`` nor HTML in cells.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmiflow.bench.formulas import MIN_SAMPLES
from lmiflow.redact import redact
from lmiflow.report.model import RunReport
from lmiflow.sizing.memory import GiB
from lmiflow.targets.aws_requests import AwsRequest, compact
from lmiflow.targets.staging import StagingReport
from lmiflow.targets.weights import WeightsPlan

NOT_RUN = "not run"

# report.json key order: the RunReport's fields (DESIGN.md's contract first); keys a caller's
# dict adds follow, sorted.
TOP_LEVEL_KEYS = tuple(RunReport.model_fields)
STATUS_COLOURS = {
    "promoted": "#1a7f37",
    "planned": "#0969da",
    "rejected": "#bc4c00",
    "failed": "#cf222e",
}


# ---------------------------------------------------------------- document model


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


@dataclass
class Section:
    anchor: str
    title: str
    blocks: list[Any] = field(default_factory=list)


# ---------------------------------------------------------------- formatting


def _fmt(value: Any) -> str:
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


def _gib(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—"
    return f"{value / GiB:,.2f} GiB"


def _usd(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—"
    return f"${value:,.{digits}f}"


def _secs(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—"
    return f"{value:,.2f}"


def _mark(ok: Any) -> str:
    if ok is None:
        return "—"
    return "✅" if ok else "❌"


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _duration(start: Any, end: Any) -> str:
    try:
        seconds = dt.datetime.fromisoformat(str(end)) - dt.datetime.fromisoformat(str(start))
    except (TypeError, ValueError):
        return "—"
    return f"{seconds.total_seconds():,.1f} s"


# ---------------------------------------------------------------- sections


def _summary(r: Mapping[str, Any]) -> Section:
    status = str(r.get("status") or "unknown")
    model = r.get("model") if isinstance(r.get("model"), Mapping) else {}
    chosen = _get(r, "plan", "chosen")
    rows = [
        ["status", status],
        ["endpoint (production)", _fmt(r.get("endpoint"))],
        ["candidate endpoint", _fmt(r.get("candidate_endpoint"))],
        ["target", _fmt(r.get("target"))],
        ["model", f"{_fmt(model.get('id'))} @ {_fmt(model.get('revision'))}"],
        ["instance", _option_name(chosen) if chosen else "—"],
        ["image", _fmt(r.get("image_uri"))],
        ["run id", _fmt(r.get("run_id"))],
        ["started / finished", f"{_fmt(r.get('started_at'))} / {_fmt(r.get('finished_at'))}"],
        ["duration", _duration(r.get("started_at"), r.get("finished_at"))],
        ["gate", _verdict(_get(r, "gate", "passed"))],
    ]
    blocks: list[Any] = []
    if r.get("failed_step") or r.get("error"):
        blocks.append(Para(f"Failed step: {_fmt(r.get('failed_step'))}", strong=True))
        if r.get("error"):
            blocks.append(Code(str(r["error"])))
    blocks.append(Table(["", "value"], rows))
    extra = {k: v for k, v in model.items() if k not in ("id", "revision")}
    if extra:
        blocks.append(Table(["model", "value"], [[k, _fmt(v)] for k, v in extra.items()]))
    return Section("summary", f"Summary: {status}", blocks)


def _verdict(passed: Any) -> str:
    if passed is None:
        return NOT_RUN
    return "✅ passed" if passed else "❌ failed"


def _option_name(option: Mapping[str, Any]) -> str:
    return (
        f"{_fmt(option.get('instance_type'))} ({_fmt(option.get('gpu_count'))} GPU, "
        f"TP {_fmt(option.get('tensor_parallel_degree'))}, "
        f"{_fmt(option.get('model_copies'))} "
        f"{'copy' if option.get('model_copies') == 1 else 'copies'}, "
        f"{_usd(option.get('usd_per_hour'))}/h)"
    )


def _steps(r: Mapping[str, Any]) -> Section:
    steps = r.get("steps") or []
    if not steps:
        return Section("steps", "Steps", [Para(NOT_RUN)])
    icons = {"completed": "✅", "failed": "❌", "skipped": "⏭"}
    rows = [
        [
            f"{icons.get(str(s.get('status')), '')} {_fmt(s.get('status'))}".strip(),
            _fmt(s.get("name")),
            _secs(s.get("seconds")) if s.get("status") != "skipped" else "—",
            _fmt(s.get("summary")),
        ]
        for s in steps
    ]
    total = sum(s.get("seconds") or 0.0 for s in steps if isinstance(s.get("seconds"), float | int))
    return Section(
        "steps",
        "Steps",
        [
            Table(["status", "step", "seconds", "summary"], rows),
            Para(f"Steps' own time: {total:,.1f} s."),
            Plot("step_timeline", "Step timeline"),
        ],
    )


def _memory(r: Mapping[str, Any]) -> Section:
    plan = r.get("plan")
    if not plan:
        return Section("memory", "Memory", [Para(NOT_RUN)])
    memory = plan.get("memory") or {}
    chosen = plan.get("chosen") or {}
    per_gpu = chosen.get("per_gpu") or {}
    blocks: list[Any] = []
    if chosen:
        blocks.append(Para(f"Chosen: {_option_name(chosen)}"))
        if plan.get("chosen_reason"):
            blocks.append(Para(f"Why: {plan['chosen_reason']}"))
    else:
        blocks.append(Para(f"No option chosen: {_fmt(plan.get('chosen_reason'))}", strong=True))
    usable = per_gpu.get("usable_bytes")
    required = chosen.get("per_gpu_required_bytes")
    if required is None and per_gpu:
        parts = [per_gpu.get(k) for k in ("weights_bytes", "kv_cache_bytes", "overhead_bytes")]
        required = sum(p for p in parts if isinstance(p, int | float)) or None
    headroom = (
        usable - required
        if isinstance(usable, int | float) and isinstance(required, int | float)
        else None
    )
    rows = [
        ["weights", _gib(memory.get("weights_bytes")), _gib(per_gpu.get("weights_bytes"))],
        ["KV cache", _gib(memory.get("kv_cache_bytes")), _gib(per_gpu.get("kv_cache_bytes"))],
        ["overhead", _gib(memory.get("overhead_bytes")), _gib(per_gpu.get("overhead_bytes"))],
        ["total / required", _gib(memory.get("total_bytes")), _gib(required)],
        ["usable", "—", _gib(usable)],
        ["headroom", "—", _gib(headroom)],
    ]
    blocks.append(Table(["component", "whole model", "per GPU (chosen)"], rows))
    blocks.append(Plot("memory_per_gpu", "Memory per GPU by component"))
    return Section("memory", "Memory", blocks)


def _options(r: Mapping[str, Any]) -> Section:
    options = _get(r, "plan", "options") or []
    if not options:
        return Section("options", "Instance options", [Para(NOT_RUN)])
    chosen = _get(r, "plan", "chosen") or {}
    rows = []
    for rank, o in enumerate(options, 1):
        is_chosen = all(
            o.get(k) == chosen.get(k) for k in ("instance_type", "tensor_parallel_degree")
        ) and bool(chosen)
        rows.append(
            [
                f"{rank}{' ★' if is_chosen else ''}",
                _fmt(o.get("instance_type")),
                _fmt(o.get("gpu_count")),
                _gib(o.get("gpu_memory_bytes")),
                _fmt(o.get("tensor_parallel_degree")),
                _fmt(o.get("model_copies")),
                _mark(o.get("fits")),
                _gib(o.get("per_gpu_required_bytes")),
                _usd(o.get("usd_per_hour")),
                _fmt(o.get("max_concurrency")),
                _fmt(o.get("reason")),
            ]
        )
    fit = sum(1 for o in options if o.get("fits"))
    return Section(
        "options",
        "Instance options",
        [
            Para(
                f"{len(options)} options in the planner's rank order, {fit} fit; ★ marks the "
                "chosen one. The reason column says why the others do not fit."
            ),
            Table(
                [
                    "#",
                    "instance",
                    "GPUs",
                    "GPU memory",
                    "TP",
                    "copies",
                    "fits",
                    "per-GPU need",
                    "$/h",
                    "max concurrency",
                    "reason",
                ],
                rows,
            ),
            Plot("options_vs_price", "Instance options vs price"),
        ],
    )


def _fence(text: str) -> str:
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def _serving(r: Mapping[str, Any]) -> Section:
    text = r.get("serving_properties")
    if not text:
        return Section("serving-properties", "serving.properties", [Para(NOT_RUN)])
    return Section("serving-properties", "serving.properties", [Code(str(text), "properties")])


def _weights(r: Mapping[str, Any]) -> list[Section]:
    plan = r.get("weights")
    if not plan:
        return []
    blocks: list[Any] = [Bullets(WeightsPlan.model_validate(plan).summary())]
    staging = r.get("staging")
    if staging:
        result = StagingReport.model_validate(staging)
        blocks += [Para(f"Staged: {result.summary()}", strong=True), Table(
            ["file", "size", "status", "seconds"],
            [[f.name, f"{f.size / 1e6:,.1f} MB", f.status, _secs(f.seconds)]
             for f in result.files])]
    return [Section("weights", "Weights", blocks)]


def _requests(r: Mapping[str, Any]) -> list[Section]:
    """The AWS requests (compact; report.json has them in full) and the IAM policies."""
    reqs = r.get("requests")
    if not reqs:
        return []
    lines = compact([AwsRequest(**q) for q in reqs])
    out = [Section("aws-requests", "AWS requests", [
        Para(f"{len(reqs)} requests, in the order the run sends them, each valid for "
             "botocore's service model; secrets masked. Full parameters: report.json."),
        Code("\n".join(lines))])]
    policies = [(t, r.get(k)) for t, k in (("The runner's IAM policy", "iam_policy"),
                                            ("The execution role's", "execution_role_policy"))]
    blocks = [b for title, doc in policies if doc
              for b in (Para(title, strong=True), Code(json.dumps(doc, indent=2), "json"))]
    if blocks:
        out.append(Section("iam", "IAM permissions", blocks))
    return out


def _smoke(r: Mapping[str, Any]) -> Section:
    smoke = r.get("smoke_test")
    if not smoke:
        return Section("smoke-test", "Smoke test", [Para(NOT_RUN)])
    return Section(
        "smoke-test",
        "Smoke test",
        [
            Para(f"{_verdict(smoke.get('passed'))} in {_fmt(smoke.get('seconds'))} s", strong=True),
            Code(str(smoke.get("output") or "")),
        ],
    )


def _pct(dist: Any, stat: str) -> str:
    if not isinstance(dist, Mapping) or dist.get(stat) is None:
        return "—"
    text = _fmt(dist.get(stat))
    n = dist.get("n")
    if isinstance(n, int) and n < MIN_SAMPLES.get(stat, 0):
        text += " †"
    return text


def _levels_table(bench: Mapping[str, Any]) -> tuple[Table, bool]:
    headers = [
        "concurrency",
        "requests",
        "errors",
        "error rate",
        "TTFT p50",
        "TTFT p90",
        "TTFT p99",
        "TPOT p50",
        "TPOT p90",
        "TPOT p99",
        "ITL p50",
        "ITL p99",
        "E2E p50",
        "E2E p99",
        "n",
        "tokens/s",
        "req/min",
        "goodput/s",
        "$/1M tokens",
    ]
    rows = []
    for lv in bench.get("levels") or []:
        rows.append(
            [
                _fmt(lv.get("concurrency")),
                _fmt(lv.get("requests")),
                _fmt(lv.get("errors")),
                f"{lv['error_rate']:.2%}" if isinstance(lv.get("error_rate"), float | int) else "—",
                *(
                    _pct(lv.get(m), s)
                    for m in ("ttft_ms", "tpot_ms")
                    for s in ("p50", "p90", "p99")
                ),
                _pct(lv.get("itl_ms"), "p50"),
                _pct(lv.get("itl_ms"), "p99"),
                _pct(lv.get("e2e_ms"), "p50"),
                _pct(lv.get("e2e_ms"), "p99"),
                _fmt(_get(lv, "ttft_ms", "n")),
                _fmt(lv.get("output_tokens_per_s")),
                _fmt(lv.get("requests_per_min")),
                _fmt(lv.get("goodput_per_s")),
                _usd(lv.get("usd_per_1m_output_tokens"), 3),
            ]
        )
    few = any(cell.endswith("†") for row in rows for cell in row)
    return Table(headers, rows), few


def _benchmark(r: Mapping[str, Any]) -> Section:
    bench = r.get("benchmark")
    if not bench or not bench.get("levels"):
        return Section("benchmark", "Benchmark", [Para(NOT_RUN)])
    table, few = _levels_table(bench)
    blocks: list[Any] = [
        Para(
            "Latencies in ms; n is the number of successful requests "
            "(ITL has one sample per token gap)."
        ),
        table,
    ]
    if few:
        blocks.append(
            Para(
                "† too few samples for this percentile to mean much "
                f"(p90 < {MIN_SAMPLES['p90']}, p95 < {MIN_SAMPLES['p95']}, "
                f"p99 < {MIN_SAMPLES['p99']})."
            )
        )
    blocks += [
        Plot("latency_percentiles", "Latency percentiles vs concurrency"),
        Plot("throughput_and_cost", "Throughput and cost vs concurrency"),
    ]
    baseline = r.get("baseline")
    if baseline and baseline.get("levels"):
        base_table, _ = _levels_table(baseline)
        blocks += [Para("Baseline (the production endpoint):", strong=True), base_table]
    return Section("benchmark", "Benchmark", blocks)


def _gate(r: Mapping[str, Any]) -> Section:
    gate = r.get("gate")
    if not gate:
        return Section("gate", "Gate", [Para(NOT_RUN)])
    rows = [
        [
            _mark(c.get("passed")),
            _fmt(c.get("kind")),
            _fmt(c.get("metric")),
            _fmt(c.get("stat")),
            _fmt(c.get("concurrency")) if c.get("concurrency") is not None else "all",
            _fmt(c.get("op")),
            _fmt(c.get("threshold")),
            _fmt(c.get("observed")),
            _fmt(c.get("margin")),
        ]
        for c in gate.get("checks") or []
    ]
    blocks: list[Any] = [Para(_verdict(gate.get("passed")), strong=True)]
    if rows:
        blocks.append(
            Table(
                [
                    "",
                    "kind",
                    "metric",
                    "stat",
                    "concurrency",
                    "op",
                    "threshold",
                    "observed",
                    "margin",
                ],
                rows,
            )
        )
    else:
        blocks.append(Para("no checks"))
    return Section("gate", "Gate", blocks)


def _formulas(r: Mapping[str, Any]) -> Section:
    formulas = _get(r, "benchmark", "formulas")
    if not formulas:
        return Section("formulas", "Metric formulas", [Para(NOT_RUN)])
    return Section(
        "formulas", "Metric formulas", [Bullets([f"{k}: {v}" for k, v in formulas.items()])]
    )


def _versions(r: Mapping[str, Any]) -> Section:
    versions = dict(r.get("versions") or {})
    versions.setdefault("lmiflow", r.get("lmiflow_version"))
    return Section(
        "versions",
        "Versions",
        [Table(["component", "version"], [[k, _fmt(v)] for k, v in versions.items()])],
    )


def build_sections(report: Mapping[str, Any]) -> list[Section]:
    """The report's sections in reading order (shared by the markdown and HTML renderers)."""
    return [
        _summary(report),
        _steps(report),
        _memory(report),
        _options(report),
        _serving(report),
        *_weights(report),
        *_requests(report),
        _smoke(report),
        _benchmark(report),
        _gate(report),
        _formulas(report),
        _versions(report),
    ]


def _title(report: Mapping[str, Any]) -> str:
    return f"lmiflow run report: {_fmt(report.get('endpoint'))}"


# ---------------------------------------------------------------- markdown


_TAG_START_RE = re.compile(r"<(?=[A-Za-z/!?])")


def _md_text(text: str) -> str:
    # Markdown viewers render raw HTML: escape every "<" that could open a tag, comment or
    # processing instruction, so a model id cannot inject markup; "<=" stays readable.
    return _TAG_START_RE.sub("&lt;", text)


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_block(block: Any) -> str:
    if isinstance(block, Para):
        text = _md_text(block.text)
        return f"**{text}**" if block.strong else text
    if isinstance(block, Table):
        lines = [
            "| " + " | ".join(_md_cell(h) for h in block.headers) + " |",
            "|" + "|".join(" --- " for _ in block.headers) + "|",
        ]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Code):
        fence = _fence(block.text)
        return f"{fence}{block.lang}\n{block.text.rstrip(chr(10))}\n{fence}"
    if isinstance(block, Bullets):
        return "\n".join(f"- {_md_text(item)}" for item in block.items)
    if isinstance(block, Plot):
        return f"_Plot in report.html: {block.alt}._"
    raise TypeError(f"unknown block {block!r}")


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown (no images: the plots live in report.html)."""
    parts = [f"# {_md_text(_title(report))}"]
    for section in build_sections(report):
        parts.append(f"## {_md_text(section.title)}")
        parts += [_md_block(b) for b in section.blocks]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- HTML

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
# No scripts, no remote loads, only inline styles and data: images, even if escaping failed.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _looks_numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace("$", "").replace(" †", "").replace("%", "")
    try:
        float(stripped)
    except ValueError:
        return False
    return True


# The markdown keeps the emoji marks; in HTML they become coloured text symbols, which every
# font has (headless Chromium and many Linux desktops lack a colour-emoji font).
_HTML_MARKS = {
    "✅": '<span class="ok">✔</span>',
    "❌": '<span class="bad">✘</span>',
    "⏭": '<span class="skip">–</span>',
}


def _html_text(text: str) -> str:
    out = html.escape(text)
    for mark, span in _HTML_MARKS.items():
        out = out.replace(mark, span)
    return out


def _html_block(block: Any, plots: Mapping[str, bytes | None]) -> str:
    esc = _html_text
    if isinstance(block, Para):
        return (
            f'<p class="strong">{esc(block.text)}</p>'
            if block.strong
            else (f"<p>{esc(block.text)}</p>")
        )
    if isinstance(block, Table):
        head = "".join(f"<th>{esc(h)}</th>" for h in block.headers)
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="num">{esc(c)}</td>' if _looks_numeric(c) else f"<td>{esc(c)}</td>"
                for c in row
            )
            + "</tr>"
            for row in block.rows
        )
        return (
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>"
        )
    if isinstance(block, Code):
        return f"<pre><code>{html.escape(block.text)}</code></pre>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Plot):
        png = plots.get(block.name)
        if not png:
            return f"<p>{esc(block.alt)}: {NOT_RUN}</p>"
        data = base64.b64encode(png).decode("ascii")
        return (
            f'<img class="plot" id="plot-{esc(block.name)}" alt="{esc(block.alt)}" '
            f'src="data:image/png;base64,{data}">'
        )
    raise TypeError(f"unknown block {block!r}")


def render_html(report: Mapping[str, Any], plots: Mapping[str, bytes | None] | None = None) -> str:
    """The report as one self-contained HTML page (inline CSS, plots as data: PNGs)."""
    if plots is None:
        from lmiflow.report.plots import all_plots

        plots = all_plots(dict(report))
    esc = html.escape
    sections = build_sections(report)
    status = str(report.get("status") or "unknown")
    colour = STATUS_COLOURS.get(status, "#57606a")
    nav = "".join(f'<a href="#{s.anchor}">{esc(s.title.split(":")[0])}</a>' for s in sections)
    body = []
    for s in sections:
        inner = "\n".join(_html_block(b, plots) for b in s.blocks)
        body.append(f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>\n{inner}</section>')
    title = _title(report)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style></head>\n<body><main>\n"
        f'<h1>{esc(title)} <span class="badge" style="background:{colour}">{esc(status)}'
        f"</span></h1>\n<nav>{nav}</nav>\n"
        + "\n".join(body)
        + f"\n<footer>lmiflow {esc(_fmt(report.get('lmiflow_version')))} · run "
        f"{esc(_fmt(report.get('run_id')))} · finished {esc(_fmt(report.get('finished_at')))}"
        "</footer>\n</main></body></html>\n"
    )


# ---------------------------------------------------------------- JSON and files


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only; NaN/inf become null (json.dumps would write invalid JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "model_dump"):  # a pydantic model that slipped through
        return _jsonable(obj.model_dump(mode="json"))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, (dt.datetime, dt.date)):
        return obj.isoformat()
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def _ordered(report: Mapping[str, Any]) -> dict[str, Any]:
    head = {k: report[k] for k in TOP_LEVEL_KEYS if k in report}
    tail = {k: report[k] for k in sorted(report) if k not in head}
    return {**head, **tail}


def render_json(report: Mapping[str, Any]) -> str:
    return json.dumps(_ordered(_jsonable(report)), indent=2, ensure_ascii=False) + "\n"


def write_report(report: RunReport | Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Redact ``report`` and write report.json, report.md and report.html into ``out_dir``.

    Returns the paths by kind ("json", "md", "html"). The caller's report is not modified.
    """
    if isinstance(report, RunReport):
        report = report.to_json_dict()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Plain JSON types first, so a pydantic model or dataclass inside is redacted too.
    safe = _ordered(redact(_jsonable(report)))
    paths = {
        "json": out_dir / "report.json",
        "md": out_dir / "report.md",
        "html": out_dir / "report.html",
    }
    texts = {"json": render_json(safe), "md": render_markdown(safe), "html": render_html(safe)}
    for kind, path in paths.items():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(texts[kind], encoding="utf-8")
        tmp.replace(path)  # a reader never sees half a report
    return paths
