"""The report's plots as PNG bytes, one function per plot, each None when its data is missing.

matplotlib is imported inside the functions (it costs about a second) and used through
``Figure`` + the Agg canvas, never ``pyplot``: no global backend switch, no figure registry,
nothing left open in a long-running worker.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmiflow.sizing.units import GB

if TYPE_CHECKING:
    from lmiflow.bench.gates import Verdict
    from lmiflow.bench.metrics import BenchResult, LevelResult
    from lmiflow.report.model import RunReport, StepRecord
    from lmiflow.sizing.planner import Option, Plan

DPI = 100

# Okabe-Ito (colour-blind-safe) colours, except RED: failures should read as plainly red.
BLUE, ORANGE, GREY, GREEN, RED, PURPLE = (
    "#0072B2",
    "#E69F00",
    "#999999",
    "#009E73",
    "#C62828",
    "#CC79A7",
)
STATUS_COLOURS = {"completed": GREEN, "failed": RED, "skipped": GREY}
PER_GPU_PARTS = ("weights_bytes", "kv_cache_bytes", "overhead_bytes")
PERCENTILE_STYLES = {"p50": ("-", "o", BLUE), "p90": ("--", "s", GREEN), "p99": (":", "^", PURPLE)}


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    # No metadata: the same report gives the same bytes (no Software/date chunk churn).
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _nan(value: float | None) -> float:
    """matplotlib leaves a gap at NaN."""
    return float("nan") if value is None else value


def _option_label(option: Option) -> str:
    label = f"{option.instance_type}  TP{option.tensor_parallel_degree}"
    if option.model_copies > 1:
        label += f" ×{option.model_copies}"
    return label


def _same_option(a: Option | None, b: Option) -> bool:
    return a is not None and (a.instance_type, a.tensor_parallel_degree) == (
        b.instance_type, b.tensor_parallel_degree)


def _price_order(option: Option) -> tuple[bool, float]:
    return option.usd_per_hour is None, option.usd_per_hour or 0.0


def memory_per_gpu(plan: Plan | None) -> bytes | None:
    """Stacked bars (weights / KV / overhead) per GPU against usable memory.

    Shows the chosen option, the next fitting ones and the cheapest that do not fit, so a
    reader sees both what was picked and why the cheaper instances were not.
    """
    if plan is None or not plan.options:
        return None
    options, chosen = plan.options, plan.chosen
    picked = [o for o in options if _same_option(chosen, o)][:1]
    others_fit = [o for o in options if o.fits and not _same_option(chosen, o)]
    not_fit = sorted((o for o in options if not o.fits), key=_price_order)
    picked += others_fit[: 3 if picked else 4] + not_fit[:3]
    picked = picked[:7]

    fig = _figure(9.5, 0.75 * len(picked) + 1.6)
    ax = fig.add_subplot()
    labels, ys = [], list(range(len(picked)))[::-1]
    for y, option in zip(ys, picked, strict=True):
        per = option.per_gpu
        left = 0.0
        for key, colour, name in (
            ("weights_bytes", BLUE, "weights"),
            ("kv_cache_bytes", ORANGE, "KV cache"),
            ("overhead_bytes", GREY, "overhead"),
        ):
            width = per.get(key, 0) / GB
            ax.barh(
                y, width, left=left, color=colour, height=0.6, label=name if y == ys[0] else None
            )
            left += width
        usable = option.usable_bytes_per_gpu
        ax.plot(
            [usable / GB] * 2,
            [y - 0.42, y + 0.42],
            color="black",
            linewidth=2.5,
            label="usable per GPU" if y == ys[0] else None,
        )
        verdict = "fits" if option.fits else "does not fit"
        ax.text(
            max(left, usable / GB) * 1.01 + 0.2,
            y,
            f"needs {left:.1f} of {usable / GB:.1f} GB: {verdict}",
            va="center",
            fontsize=8,
            color=GREEN if option.fits else RED,
        )
        label = _option_label(option)
        if _same_option(chosen, option):
            label += "  (chosen)"
        labels.append(label)
    ax.set_yticks(ys, labels, fontsize=9)
    for tick, option in zip(ax.get_yticklabels(), picked, strict=True):
        tick.set_color("black" if option.fits else RED)
        if _same_option(chosen, option):
            tick.set_fontweight("bold")
    ax.set_xlabel("GB per GPU (10^9 bytes)")
    ax.set_title("Memory per GPU by component (bar) vs usable memory (black mark)")
    # Room on the right for the "needs X of Y GB" labels.
    widest = max(
        max(sum(o.per_gpu.get(k, 0) for k in PER_GPU_PARTS), o.usable_bytes_per_gpu)
        for o in picked
    )
    ax.set_xlim(0, widest / GB * 1.5 + 1)
    fig.legend(loc="outside lower center", fontsize=8, ncols=4, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def options_vs_price(plan: Plan | None, limit: int = 24) -> bytes | None:
    """Hourly price per option, green when it fits, red when not; the chosen one outlined.
    None when no option has a price (this machine): a chart of $0 says nothing."""
    if plan is None or not any(o.usd_per_hour is not None for o in plan.options):
        return None
    chosen = plan.chosen
    options = sorted(plan.options, key=_price_order)
    if len(options) > limit:
        keep = [o for o in options if _same_option(chosen, o)]
        options = [o for o in options if not _same_option(chosen, o)][: limit - len(keep)] + keep
        options.sort(key=_price_order)
    fig = _figure(9.5, 0.32 * len(options) + 1.5)
    ax = fig.add_subplot()
    ys = list(range(len(options)))[::-1]
    prices = [o.usd_per_hour for o in options]
    top = max((p for p in prices if p is not None), default=1.0)
    for y, option, price in zip(ys, options, prices, strict=True):
        is_chosen = _same_option(chosen, option)
        colour = GREEN if option.fits else RED
        if price is None:
            ax.text(0, y, "  no price known", va="center", fontsize=8, color=colour)
            continue
        ax.barh(
            y,
            price,
            color=colour,
            alpha=1.0 if option.fits else 0.55,
            edgecolor="black" if is_chosen else "none",
            linewidth=2 if is_chosen else 0,
            height=0.7,
        )
        ax.text(price + top * 0.01, y, f"${price:,.2f}", va="center", fontsize=8)
    labels = [_option_label(o) + ("  (chosen)" if _same_option(chosen, o) else "") for o in options]
    ax.set_yticks(ys, labels, fontsize=8)
    for tick, option in zip(ax.get_yticklabels(), options, strict=True):
        if _same_option(chosen, option):
            tick.set_fontweight("bold")
    if top / max(min((p for p in prices if p), default=top), 1e-9) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("USD per hour (one instance)")
    ax.set_title("Instance options by price: green fits, red does not")
    ax.set_xlim(right=ax.get_xlim()[1] * 1.25)
    ax.grid(axis="x", alpha=0.3, which="both")
    return _png(fig)


def _levels(benchmark: BenchResult | None) -> list[LevelResult]:
    if benchmark is None:
        return []
    return sorted((lv for lv in benchmark.levels if lv.concurrency), key=lambda lv: lv.concurrency)


def _concurrency_axis(ax: Any, concurrencies: Sequence[float]) -> None:
    if len(concurrencies) > 1 and max(concurrencies) / min(concurrencies) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(list(concurrencies), [f"{c:g}" for c in concurrencies])
    ax.minorticks_off()
    ax.set_xlabel("concurrency")
    ax.grid(alpha=0.3)


def latency_percentiles(
    benchmark: BenchResult | None,
    baseline: BenchResult | None = None,
    gate: Verdict | None = None,
) -> bytes | None:
    """TTFT and TPOT p50/p90/p99 per concurrency; baseline dashed grey, gate limits in red."""
    levels = _levels(benchmark)
    if not levels:
        return None
    base_levels = _levels(baseline)
    fig = _figure(10, 4.2)
    axes = fig.subplots(1, 2)
    for ax, metric, title in (
        (axes[0], "ttft_ms", "Time to first token"),
        (axes[1], "tpot_ms", "Time per output token"),
    ):
        xs = [lv.concurrency for lv in levels]
        top = 0.0
        for stat, (style, marker, colour) in PERCENTILE_STYLES.items():
            ys = [getattr(getattr(lv, metric), stat) for lv in levels]
            if any(y is not None for y in ys):
                ax.plot(
                    xs,
                    [_nan(y) for y in ys],
                    linestyle=style,
                    marker=marker,
                    color=colour,
                    label=stat,
                )
                top = max([top, *(y for y in ys if y is not None)])
        if base_levels:
            bx = [lv.concurrency for lv in base_levels]
            for stat, (style, _marker, _colour) in PERCENTILE_STYLES.items():
                by = [getattr(getattr(lv, metric), stat) for lv in base_levels]
                if any(y is not None for y in by):
                    ax.plot(
                        bx,
                        [_nan(y) for y in by],
                        linestyle=style,
                        color=GREY,
                        alpha=0.8,
                        label=f"baseline {stat}",
                    )
                    top = max([top, *(y for y in by if y is not None)])
        # SLO limits only: a regression bound follows production's values (the baseline lines).
        limits = sorted(
            {
                (c.stat, c.op, c.threshold)
                for c in (gate.checks if gate else [])
                if c.metric == metric and c.kind == "slo"
            },
            key=str,
        )
        data_top = top
        for stat, op, threshold in limits:
            if data_top > 0 and threshold > 4 * data_top:
                # A far-off limit would flatten the data into the x axis: name it instead.
                ax.annotate(f"gate {stat} {op} {threshold:g} (off scale)", (0.01, 0.97),
                            xycoords="axes fraction", va="top", fontsize=7, color=RED)
                continue
            ax.axhline(threshold, color=RED, linewidth=1, linestyle="-.")
            # Labelled on the line itself: the legend is shared by both panels.
            ax.annotate(
                f"gate {stat} {op} {threshold:g}",
                (0.01, threshold),
                xycoords=("axes fraction", "data"),
                xytext=(0, 2),
                textcoords="offset points",
                fontsize=7,
                color=RED,
            )
            top = max(top, threshold)
        _concurrency_axis(ax, xs)
        ax.set_ylabel("ms")
        ax.set_ylim(0, top * 1.12 if top > 0 else 1.0)
        ax.set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", fontsize=8, ncols=6, frameon=False)
    return _png(fig)


def throughput_and_cost(benchmark: BenchResult | None) -> bytes | None:
    """Output tokens/s (left) and $ per 1M output tokens (right) per concurrency."""
    levels = _levels(benchmark)
    if not levels:
        return None
    xs = [lv.concurrency for lv in levels]
    tok = [lv.output_tokens_per_s for lv in levels]
    usd = [lv.usd_per_1m_output_tokens for lv in levels]
    fig = _figure(9.5, 4)
    ax = fig.add_subplot()
    ax.plot(
        xs,
        [_nan(t) for t in tok],
        marker="o",
        color=BLUE,
        label="output tokens/s",
    )
    ax.set_ylabel("output tokens/s", color=BLUE)
    ax.tick_params(axis="y", colors=BLUE)
    ax.set_ylim(bottom=0)
    _concurrency_axis(ax, xs)
    handles, labels = ax.get_legend_handles_labels()
    if any(u is not None for u in usd):
        ax2 = ax.twinx()
        ax2.plot(
            xs,
            [_nan(u) for u in usd],
            marker="s",
            linestyle="--",
            color=ORANGE,
            label="$ per 1M output tokens",
        )
        ax2.set_ylabel("USD per 1M output tokens", color=ORANGE)
        ax2.tick_params(axis="y", colors=ORANGE)
        ax2.set_ylim(bottom=0)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    else:
        ax.set_title("(no price known: cost not shown)", fontsize=8, loc="right")
    ax.legend(handles, labels, loc="upper center", fontsize=8)
    ax.set_title("Throughput and cost vs concurrency", loc="left")
    return _png(fig)


def step_timeline(steps: Sequence[StepRecord]) -> bytes | None:
    """Gantt-like bars of the steps from their start times; failed red, skipped grey."""
    starts = [s.started_at for s in steps]
    known = [s for s in starts if s is not None]
    if not known:
        return None
    t0 = min(known)
    end = max((st - t0) + s.seconds for s, st in zip(steps, starts, strict=True) if st is not None)
    fig = _figure(9.5, 0.34 * len(steps) + 1.4)
    ax = fig.add_subplot()
    ys = list(range(len(steps)))[::-1]
    for y, step, start in zip(ys, steps, starts, strict=True):
        status = step.status
        colour = STATUS_COLOURS.get(status, PURPLE)
        seconds = step.seconds
        if start is None:
            ax.text(0, y, f"  {status}", va="center", fontsize=8, color=GREY)
            continue
        # A sub-second step still gets a visible sliver.
        ax.barh(y, max(seconds, end * 0.003), left=start - t0, color=colour, height=0.6)
        ax.text(
            start - t0 + max(seconds, end * 0.003) + end * 0.01,
            y,
            f"{seconds:,.2f} s",
            va="center",
            fontsize=8,
            color=RED if status == "failed" else "black",
        )
    ax.set_yticks(ys, [s.name for s in steps], fontsize=9)
    ax.set_xlim(0, max(end, 1e-3) * 1.15)
    ax.set_xlabel("seconds since the first step started")
    ax.set_title("Step timeline (green completed, red failed, grey skipped)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def all_plots(report: RunReport) -> dict[str, bytes | None]:
    """Every plot of a report by name; a plot whose data is missing is None."""
    return {
        "memory_per_gpu": memory_per_gpu(report.plan),
        "options_vs_price": options_vs_price(report.plan),
        "latency_percentiles": latency_percentiles(report.benchmark, report.baseline, report.gate),
        "throughput_and_cost": throughput_and_cost(report.benchmark),
        "step_timeline": step_timeline(report.steps),
    }
