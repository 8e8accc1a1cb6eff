"""The report's substance as one Markdown artifact for the Prefect UI: the outcome, the plan,
the gate and the benchmark, with the plots Prefect can show inline (PNG data URIs), and where
the full report lives. A file:// link opens nothing from a browser, nor on a remote worker's
files; this text travels with the flow run itself."""

from __future__ import annotations

import base64
from collections.abc import Mapping

from lmiflow.report.model import RunReport
from lmiflow.report.outcome import METRIC_NAMES, explain_check, figure, sig
from lmiflow.sizing.units import gb

# Plots worth their weight in the UI (each a few tens of kB): what the run decided on.
INLINE_PLOTS = {"memory_per_gpu": "Memory per GPU", "latency_percentiles": "Latency"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows])


def digest(r: RunReport, location: str, plots: Mapping[str, bytes | None] | None = None
           ) -> str:
    """Markdown: verdict first, then why, then the evidence. `location`: where the full
    report is (a path on the machine that ran it, or an S3 URL)."""
    lines = [f"# {r.endpoint}: {r.status}", ""]
    oc = r.outcome
    if oc:
        lines += [f"**{oc.headline}**", ""]
        lines += [f"- ❌ {reason}" for reason in oc.reasons]
        lines += [f"- next: {step}" for step in oc.next_steps]
        lines.append("")
    p = r.plan
    if p and p.chosen:
        c = p.chosen
        price = "" if c.usd_per_hour is None else f", ${c.usd_per_hour:.2f}/h"
        lines += ["## Plan", "",
                  f"Chosen: `{c.instance_type}` x{c.instance_count}, "
                  f"{c.gpu_count}x {c.accelerator}, tensor parallel "
                  f"{c.tensor_parallel_degree}, {c.model_copies} model cop"
                  f"{'y' if c.model_copies == 1 else 'ies'}{price}. {p.chosen_reason}.", "",
                  f"Per device: {gb(c.per_gpu_required_bytes)} needed of "
                  f"{gb(c.usable_bytes_per_gpu)} usable. Model: {r.model.id}, "
                  f"weights {gb(p.memory.weights_bytes)}, KV cache "
                  f"{gb(p.memory.kv_cache_bytes)} for the workload (GB = 10^9 bytes).", ""]
    if r.gate and r.gate.checks:
        rows = [["✅" if c.passed else "❌", c.kind, explain_check(c)] for c in r.gate.checks]
        lines += ["## Gate: " + ("passed" if r.gate.passed else "rejected"), ""]
        lines += [*_table(["", "kind", "check"], rows), ""]
        lines += [f"- {n}" for n in r.gate.notes]
        lines.append("")
    if r.benchmark and r.benchmark.levels:
        rows = []
        for lv in r.benchmark.levels:
            rows.append([str(lv.concurrency), str(lv.requests), str(lv.errors),
                         figure("ttft_ms", lv.ttft_ms.p50), figure("ttft_ms", lv.ttft_ms.p95),
                         figure("tpot_ms", lv.tpot_ms.p50),
                         "-" if lv.output_tokens_per_s is None
                         else sig(lv.output_tokens_per_s),
                         "-" if lv.usd_per_1m_output_tokens is None
                         else f"${sig(lv.usd_per_1m_output_tokens)}"])
        lines += ["## Benchmark", ""]
        headers = ["concurrency", "requests", "errors", "TTFT p50", "TTFT p95", "TPOT p50",
                   METRIC_NAMES["output_tokens_per_s"], "$/1M tokens"]
        lines += [*_table(headers, rows), ""]
    for key, title in INLINE_PLOTS.items():
        png = (plots or {}).get(key)
        if png:
            lines += [f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})",
                      ""]
    lines += ["## Full report", "", f"{location} (report.html, report.md, report.json)"]
    if r.promotion and r.promotion.removed:
        lines += ["", "Removed after promotion: " + ", ".join(r.promotion.removed)]
    if r.cleanup:
        lines += ["", "Candidate removed: " + ", ".join(r.cleanup)]
    return "\n".join(lines) + "\n"
