"""The plan as a person reads it: the per-GPU breakdown, then the options ranked."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from lmiflow.sizing.memory import GiB
from lmiflow.sizing.planner import Option, Plan


def _gb(b: float | None) -> str:
    return "-" if b is None else f"{b / 1e9:.1f} GB"


def _ms(v: float | None) -> str:
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
    line = (f"TTFT {_ms(pr.ttft_ms)}, TPOT {_ms(pr.tpot_ms)}, E2E {_ms(pr.e2e_ms)}, "
            f"{pr.output_tokens_per_s:,.0f} output tokens/s")
    if o.usd_per_1m_output_tokens is not None:
        line += f", ${o.usd_per_1m_output_tokens:.2f} per 1M output tokens"
    line += f" ({pr.bound}-bound decode; {'calibrated' if pr.calibrated else 'uncalibrated'})"
    if pr.saturated:
        line += "; prefills saturate the copy: queues grow, TTFT is a floor"
    return line


def print_plan(p: Plan, source: str, show_all: bool = False, console: Console | None = None):
    # Piped output gets a wide console: the reasons are the point of the table.
    con = console or Console(width=None if Console().is_terminal else 180)
    m, r = p.model, p.request
    con.print(f"[bold]Model[/bold] {source}: {m.model_type}, {m.parameters:,} parameters"
              + (f" ({m.active_parameters:,} active)" if m.active_parameters != m.parameters
                 else "")
              + f", KV cache {m.kv_cache_bytes_per_token:,} bytes/token ({p.dtypes.kv_cache})")
    con.print(f"[bold]Workload[/bold] {r.concurrency} concurrent x ({r.max_input_tokens} in + "
              f"{r.max_output_tokens} out) tokens; weights {p.dtypes.weights}")
    mem = p.memory
    con.print(f"[bold]Whole model, unsharded[/bold]: weights {_gb(mem.weights_bytes)} + KV cache "
              f"{_gb(mem.kv_cache_bytes)} + overhead {_gb(mem.overhead_bytes)} = "
              f"[bold]{_gb(mem.total_bytes)}[/bold]")
    for w in p.warnings:
        con.print(f"[yellow]note:[/yellow] {w}")
    if p.chosen:
        c = p.chosen
        pg = c.per_gpu
        con.print(f"\n[bold green]Chosen[/bold green]: {c.instance_type} x{c.instance_count}, "
                  f"tensor parallel {c.tensor_parallel_degree}, {c.model_copies} model "
                  f"cop{'y' if c.model_copies == 1 else 'ies'} — {p.chosen_reason}")
        con.print(f"  per GPU: weights {_gb(pg['weights_bytes'])} + KV {_gb(pg['kv_cache_bytes'])}"
                  f" + overhead {_gb(pg['overhead_bytes'])} = {_gb(c.per_gpu_required_bytes)} "
                  f"of {_gb(pg['usable_bytes'])} usable ({r.gpu_memory_utilization:.0%} of "
                  f"{c.gpu_memory_bytes / GiB:.1f} GiB)")
        con.print(f"  predicted p50 at {r.concurrency} concurrent: {predicted_line(c)}")
    else:
        con.print(f"\n[bold red]No option fits[/bold red]: {p.chosen_reason}")
    for acc, how in sorted(p.calibration.items()):
        con.print(f"[dim]latency factors for {acc}: {how}[/dim]")
    # "n x c x r": instances x model copies per instance x requests per copy.
    t = Table(title="Options (ranked; latency p50 predicted at the workload)", show_lines=False)
    for col in ("#", "instance", "GPUs", "tp", "n x c x r", "GPU need", "TTFT", "TPOT", "$/h",
                "$/1M", "holds", "verdict"):
        t.add_column(col, overflow="fold")
    shown = p.options if show_all else p.options[:15]
    for o in shown:
        style = "green" if o.eligible else ("yellow" if o.fits else "red")
        gpus = f"{o.gpu_count}x {o.accelerator.removeprefix('NVIDIA ')}"
        pr = o.predicted
        t.add_row(str(o.rank), o.instance_type, gpus, str(o.tensor_parallel_degree),
                  f"{o.instance_count}x{o.model_copies}x{o.concurrency_per_copy}",
                  _gb(o.per_gpu_required_bytes), _ms(pr and pr.ttft_ms),
                  _ms(pr and pr.tpot_ms),
                  "?" if o.usd_per_hour is None else f"{o.usd_per_hour:.2f}",
                  "-" if o.usd_per_1m_output_tokens is None
                  else f"{o.usd_per_1m_output_tokens:.2f}",
                  str(o.max_concurrency), f"[{style}]{o.reason}[/{style}]")
    con.print(t)
    if len(p.options) > len(shown):
        con.print(f"... {len(p.options) - len(shown)} more (--all)")
    cheaper = [o for o in p.options if not o.eligible and o.usd_per_hour is not None
               and p.chosen and p.chosen.usd_per_hour is not None
               and o.usd_per_hour < p.chosen.usd_per_hour]
    if cheaper:
        con.print("[bold]Why the cheaper ones fail[/bold]:")
        for o in sorted(cheaper, key=lambda o: o.usd_per_hour)[:12]:
            con.print(f"  {o.instance_type} tp {o.tensor_parallel_degree} "
                      f"(${o.usd_per_hour:.2f}/h): {o.reason}")
    for n in p.not_planned:
        con.print(f"[dim]not planned: {n['instance_type']}: {n['reason']}[/dim]")
