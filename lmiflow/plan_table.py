"""The plan as a person reads it, at any width from 80 columns up (a terminal, a pipe, a CI
log): the per-GPU breakdown, a compact options table, then why the cheaper options fail.
Prose wraps at word boundaries with a hanging indent, table cells never fold; `--all` adds
every option and the layout columns, `--json` every field at full precision."""

from __future__ import annotations

import re
import textwrap
from collections import defaultdict
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from lmiflow.sizing.catalog import CPU
from lmiflow.sizing.planner import Option, Plan
from lmiflow.sizing.units import UNIT_NOTE, gb

TOP = 15  # options the compact table shows
# What stops an option (Option.binding), in a word that fits the table.
VERDICT = {None: "ok", "latency": "latency", "price": "price", "kv_cache": "KV cache",
           "weights": "weights", "overhead": "overhead", "tp_rule": "tp rule",
           "context": "context", "dtype": "dtype"}


def ms(v: float | None) -> str:
    """Latency to the precision a prediction supports (two significant figures)."""
    if v is None:
        return "-"
    if v >= 10_000:
        return f"{v / 1000:.0f} s"
    if v >= 1000:
        return f"{v / 1000:.1f} s"
    return f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"


def predicted_line(o: Option) -> str:
    pr = o.predicted
    if pr is None:
        return "latency not predicted (no accelerator facts)"
    def likely(metric: str, value: float) -> str:
        band = pr.likely_ms.get(metric)
        return (f"{ms(value)} (likely {ms(band[0])}-{ms(band[1])})" if band else ms(value))

    line = (f"TTFT {likely('ttft_ms', pr.ttft_ms)}, TPOT {likely('tpot_ms', pr.tpot_ms)}, "
            f"E2E {ms(pr.e2e_ms)}, {pr.output_tokens_per_s:,.0f} output tokens/s")
    if o.usd_per_1m_output_tokens is not None:
        line += f", ${o.usd_per_1m_output_tokens:.2f} per 1M output tokens"
    line += f" ({pr.bound}-bound decode; {'calibrated' if pr.calibrated else 'uncalibrated'})"
    if pr.saturated:
        line += "; prefills saturate the copy: queues grow, TTFT is a floor"
    if pr.queued_per_copy:
        line += (f"; {pr.queued_per_copy} request(s) per copy wait for one of "
                 f"{pr.slots} batch slots")
    for c in pr.limits:
        line += (f"; {c.metric[:4].upper()} {c.stat} limit {c.threshold:g} ms: likely up to "
                 f"{ms(c.upper)}, {c.headroom_pct:.0f}% below it" if c.headroom_pct >= 0 else
                 f"; {c.metric[:4].upper()} {c.stat} limit {c.threshold:g} ms: likely up to "
                 f"{ms(c.upper)}, over it")
    return line


# A number and its unit, or "tp 2", never end up on two lines.
_TOGETHER = re.compile(r"(?<=\d) (?=(?:GB|ms|s|%|concurrent)\b)|(?<=\btp) (?=\d)")


def say(con: Console, text: str, indent: int = 0, hang: int = 4, style: str | None = None
        ) -> None:
    """One paragraph wrapped at the console's width; continuation lines indented by `hang`."""
    glued = _TOGETHER.sub("\u00a0", text)
    lines = textwrap.wrap(glued, width=max(40, con.width), initial_indent=" " * indent,
                          subsequent_indent=" " * (indent + hang), break_on_hyphens=False)
    for line in lines or [""]:
        con.print(line.replace("\u00a0", " "), style=style, markup=False, highlight=False,
                  soft_wrap=True)


def _gpus(o: Option) -> str:
    return f"{o.gpu_count}x {o.accelerator.removeprefix('NVIDIA ')}"


def _instance(o: Option) -> str:
    return o.instance_type if o.instance_count == 1 else f"{o.instance_count}x {o.instance_type}"


def options_table(options: list[Option], wide: bool) -> Table:
    """Compact: what decides (size, latency, price, verdict). Wide adds the layout
    (instances x copies x requests per copy), $ per 1M output tokens and the requests held."""
    t = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
    cols = ["#", "instance", "GPUs", "tp", "GB/GPU", "TTFT", "TPOT", "$/h"]
    if wide:
        cols += ["layout", "$/1M", "holds"]
    cols.append("verdict")
    for col in cols:
        right = col not in ("instance", "GPUs", "verdict")
        t.add_column(col, no_wrap=True, justify="right" if right else "left")
    for o in options:
        style = "green" if o.eligible else ("yellow" if o.fits else "red")
        pr = o.predicted
        row = [str(o.rank), _instance(o), _gpus(o), str(o.tensor_parallel_degree),
               gb(o.per_gpu_required_bytes, unit=False), ms(pr and pr.ttft_ms),
               ms(pr and pr.tpot_ms),
               "?" if o.usd_per_hour is None else f"{o.usd_per_hour:.2f}"]
        if wide:
            row += [f"{o.instance_count}x{o.model_copies}x{o.concurrency_per_copy}",
                    "-" if o.usd_per_1m_output_tokens is None
                    else f"{o.usd_per_1m_output_tokens:.2f}", f"{o.max_concurrency:,}"]
        row.append(f"[{style}]{VERDICT.get(o.binding, o.binding)}[/{style}]")
        t.add_row(*row)
    return t


def _grouped(pairs: list[tuple[Any, str]]) -> list[tuple[list[Any], str]]:
    """(item, text) pairs with the same text as one entry, in order of first appearance."""
    groups: dict[str, list[Any]] = defaultdict(list)
    for name, text in pairs:
        groups[text].append(name)
    return [(names, text) for text, names in groups.items()]


def print_plan(p: Plan, source: str, show_all: bool = False, console: Console | None = None):
    con = console or Console(highlight=False)
    m, r = p.model, p.request
    active = (f" ({m.active_parameters / 1e9:,.1f} B active)"
              if m.active_parameters != m.parameters else "")
    say(con, f"Model: {source} ({m.model_type}), {m.parameters:,} parameters{active}")
    say(con, f"KV cache: {m.kv_cache_bytes_per_token:,} bytes/token ({p.dtypes.kv_cache}); "
             f"weights {p.dtypes.weights}")
    say(con, f"Workload: {r.concurrency} concurrent x ({r.max_input_tokens:,} in + "
             f"{r.max_output_tokens:,} out) tokens")
    mem = p.memory
    say(con, f"Whole model: weights {gb(mem.weights_bytes)} + KV cache {gb(mem.kv_cache_bytes)}"
             f" + overhead {gb(mem.overhead_bytes)} = {gb(mem.total_bytes)}")
    for w in p.warnings:
        say(con, f"note: {w}", style="yellow")
    con.print()
    if p.chosen:
        c = p.chosen
        pg = c.per_gpu
        copies = f"{c.model_copies} model cop{'y' if c.model_copies == 1 else 'ies'}"
        price = "" if c.usd_per_hour is None else f", ${c.usd_per_hour:.2f}/h"
        say(con, f"Chosen: {_instance(c)}, tensor parallel {c.tensor_parallel_degree}, "
                 f"{copies}{price}", style="bold green")
        say(con, f"why: {p.chosen_reason}", indent=2)
        say(con, f"device: {_gpus(c)}" + (f" ({c.memory_source})" if c.memory_source else ""),
            indent=2)
        where = "in RAM" if c.accelerator == CPU else "per GPU"
        say(con, f"{where}: weights {gb(pg['weights_bytes'])} + KV {gb(pg['kv_cache_bytes'])}"
                 f" + overhead {gb(pg['overhead_bytes'])} = {gb(c.per_gpu_required_bytes)} of "
                 f"{gb(pg['usable_bytes'])} usable ({r.gpu_memory_utilization:.0%} of "
                 f"{gb(c.gpu_memory_bytes)})", indent=2)
        say(con, f"predicted p50 at {r.concurrency} concurrent: {predicted_line(c)}", indent=2)
    else:
        say(con, f"No option fits: {p.chosen_reason}", style="bold red")
    for accs, how in _grouped([(acc.removeprefix("NVIDIA "), how)
                               for acc, how in sorted(p.calibration.items())]):
        say(con, f"latency factors: {how} ({', '.join(accs)})", style="dim")

    shown = p.options if show_all else p.options[:TOP]
    con.print()
    con.print(f"[bold]Options[/bold] (ranked; TTFT, TPOT: predicted p50; {UNIT_NOTE})",
              highlight=False)
    table = options_table(shown, wide=show_all)
    natural = con.measure(table, options=con.options.update(max_width=10_000)).maximum
    if show_all and natural > con.width:
        table = options_table(shown, wide=False)  # the extra figures follow, per option
    con.print(table)
    if len(p.options) > len(shown):
        say(con, f"... {len(p.options) - len(shown)} more: --all lists every option with its "
                 "layout, $/1M tokens and reason; --json holds every field")
    if show_all:
        say(con, "layout: instances x model copies x requests per copy; $/1M: $ per 1M "
                 "output tokens; holds: concurrent requests within the memory and latency "
                 "limits")
        for o in shown:
            usd = ("" if o.usd_per_1m_output_tokens is None
                   else f", ${o.usd_per_1m_output_tokens:.2f}/1M")
            say(con, f"{o.rank}. {_instance(o)} tp {o.tensor_parallel_degree} (layout "
                     f"{o.instance_count}x{o.model_copies}x{o.concurrency_per_copy}{usd}, "
                     f"holds {o.max_concurrency:,}): {o.reason}", indent=2)
    else:
        _why_not(con, p, shown)
    for names, reason in _grouped([(n["instance_type"], n["reason"]) for n in p.not_planned]):
        say(con, f"not planned: {', '.join(names)}: {reason}", style="dim")


def _why_not(con: Console, p: Plan, shown: list[Option]) -> None:
    """Why the options a person would ask about lose: the cheaper ones, and those shown in the
    table but not eligible; one entry per reason."""
    chosen_price = p.chosen.usd_per_hour if p.chosen else None
    cheaper = [o for o in p.options if not o.eligible and o.usd_per_hour is not None
               and chosen_price is not None and o.usd_per_hour < chosen_price]
    losers = sorted(cheaper, key=lambda o: o.usd_per_hour)
    losers += [o for o in shown if not o.eligible and o not in losers]
    if not losers:
        return
    con.print("[bold]Why the cheaper ones fail[/bold]:" if cheaper else
              "[bold]Why they fail[/bold]:", highlight=False)
    entries = _grouped([(o, f"tp {o.tensor_parallel_degree}: {o.reason}") for o in losers])
    for group, why in entries[:12]:
        prices = sorted(o.usd_per_hour for o in group if o.usd_per_hour is not None)
        price = ("" if not prices else f" (${prices[0]:.2f}/h)" if len(prices) == 1
                 else f" (${prices[0]:.2f}-{prices[-1]:.2f}/h)")
        say(con, f"{', '.join(_instance(o) for o in group)}{price}, {why}", indent=2)
    if len(entries) > 12:
        say(con, f"... {len(entries) - 12} more reasons (--all)", indent=2)
