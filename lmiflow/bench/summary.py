"""A benchmark result as text for people: a table and notes that fit 80 columns, numbers
rounded to what the measurement supports (full precision stays in the JSON)."""

from __future__ import annotations

import textwrap
from typing import Any

from lmiflow.bench.metrics import BenchResult, LengthStats, LevelResult

WIDTH = 80


def num(v: float | None) -> str:
    """Three significant figures or so: a millisecond clock on a shared machine supports no
    more."""
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def level_label(lv: LevelResult) -> str:
    return f"{num(lv.rate_rps)}/s" if lv.rate_rps is not None else f"c={lv.concurrency}"


def lengths(s: LengthStats) -> str:
    if not s.n:
        return "-"
    if s.min == s.max:
        return f"{s.min}"
    return f"p50 {num(s.p50)} ({s.min}–{s.max})"


def level_notes(lv: LevelResult) -> list[str]:
    """What a reader of one level must know beyond its numbers."""
    notes = [f"input {lengths(lv.input_length)} tokens, output {lengths(lv.output_length)}; "
             "token counts: " + (", ".join(f"{k} {v}" for k, v in lv.token_sources.items())
                                 or "-")]
    if lv.output_length_mismatches:
        notes.append(f"{lv.output_length_mismatches} outputs not {lv.expected_output_tokens} "
                     f"tokens long (e.g. {', '.join(map(str, lv.output_length_examples))})")
    if lv.token_count_mismatches:
        diffs = ", ".join(f"{k}: {v}" for k, v in lv.token_count_differences.items())
        notes.append(f"server's token count differs on {lv.token_count_mismatches}/"
                     f"{lv.token_count_checked} requests (server − counted: {diffs})")
    if lv.ttft_ms.few_samples:
        notes.append(f"{', '.join(lv.ttft_ms.few_samples)} from {lv.ttft_ms.n} samples: too "
                     "few to mean much")
    if lv.saturated:
        notes.append(f"SATURATED: {lv.saturation_reason}")
    if lv.generator_saturated:
        notes.append(f"GENERATOR SATURATED ({lv.generator_saturated_reason}): latencies may be "
                     "the load generator's, not the endpoint's")
    if lv.errors:
        notes.append(f"{lv.errors} failed, e.g. {lv.error_examples[0]}")
    if lv.goodput is not None:
        notes.append(f"goodput {num(lv.goodput)} req/s ({num(lv.goodput_per_min)}/min)")
    return notes


def summary_lines(result: BenchResult, verdict: Any = None) -> list[str]:
    s = result.settings
    fixed = f"fixed length via {s.fixed_length}" if s.fixed_length else "outputs end at EOS"
    lines = [f"lmiflow bench: {s.source}"]
    lines += textwrap.wrap(f"api {s.api}, {fixed}, {s.requests} requests per level x "
                           f"{s.repeats} repeat(s)", WIDTH)
    head = (f"{'level':>7} {'reqs':>5} {'err%':>5} {'TTFT ms':>13} {'TPOT ms':>13} "
            f"{'E2E ms':>7} {'tok/s':>7} {'req/min':>7} {'$/1M':>6}")
    sub = (f"{'':>7} {'':>5} {'':>5} {'p50':>6} {'p95':>6} {'p50':>6} {'p95':>6} "
           f"{'p95':>7} {'':>7} {'':>7} {'':>6}")
    lines += [head, sub]
    for lv in result.levels:
        err = None if lv.error_rate is None else lv.error_rate * 100
        lines.append(
            f"{level_label(lv):>7} {lv.requests:>5} {num(err):>5} {num(lv.ttft_ms.p50):>6} "
            f"{num(lv.ttft_ms.p95):>6} {num(lv.tpot_ms.p50):>6} {num(lv.tpot_ms.p95):>6} "
            f"{num(lv.e2e_ms.p95):>7} {num(lv.output_tokens_per_s):>7} "
            f"{num(lv.requests_per_min):>7} {num(lv.usd_per_1m_output_tokens):>6}")
    notes = []
    for lv in result.levels:
        notes += [f"{level_label(lv)}: {n}" for n in level_notes(lv)]
    if result.saturation_rps is not None:
        notes.append(f"the endpoint saturates at {num(result.saturation_rps)} requests/s")
    notes += result.notes
    for n in notes:
        lines += textwrap.wrap(n, WIDTH, initial_indent="- ", subsequent_indent="  ")
    if verdict is not None:
        lines.append(f"verdict: {'PASS' if verdict.passed else 'FAIL'}")
        for c in verdict.checks:
            mark = "ok  " if c.passed else "FAIL"
            where = (f"{num(c.rate_rps)}/s" if c.rate_rps is not None
                     else f"c={c.concurrency}" if c.concurrency is not None else "all")
            text = (f"{mark} {c.metric} {c.stat} {c.op} {num(c.threshold)} @ {where}: "
                    f"observed {num(c.observed)}" + (f" ({c.note})" if c.note else ""))
            lines += textwrap.wrap(text, WIDTH, initial_indent="  ", subsequent_indent="      ")
    return lines
