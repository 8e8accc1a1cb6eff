"""The inference component in words: what one copy reserves, how copies and instances scale,
how every component of the endpoint packs onto its instances, and what a cold start costs.
Shared by the dry run's printout (80 columns) and the report's section."""

from __future__ import annotations

from textwrap import wrap

from lmiflow.report.document import Bullets, Para, Section, Table
from lmiflow.report.model import RunReport
from lmiflow.targets.components_plan import ComponentPlan


def _copies(n: int) -> str:
    return f"{n} cop{'y' if n == 1 else 'ies'}"


def summary(c: ComponentPlan) -> list[str]:
    r, s = c.resources, c.scaling
    out = [
        f"component {c.name} on endpoint {c.endpoint} ({c.instance_type}); candidate "
        f"{c.candidate}",
        f"one copy reserves {r.accelerators} accelerator(s), {r.memory_mb:,} MiB host memory "
        f"(its weights), {r.cpu_cores:g} CPU core(s)",
        f"copies: {s.min_copies}-{s.max_copies}, starting with {c.copies}; scaled on "
        f"{s.target_per_copy} concurrent requests per copy ({s.why})",
        f"instances: managed, {c.min_instances}-{c.max_instances}, starting with "
        f"{c.initial_instances}",
    ]
    if c.scales_to_zero:
        out.append("scale to zero: on; a request that finds no copy fails and raises the "
                   "NoCapacityInvocationFailures alarm, which adds one copy (and an instance "
                   "where none is left)")
    return out


def cold_start(c: ComponentPlan) -> str:
    if c.cold_start_s is None:
        return ("cold start (instance start plus model load): measured by a run's "
                "create_endpoint step; not run yet")
    return (f"cold start: about {c.cold_start_s:.0f} s (instance start plus model load, this "
            "run's create_endpoint step): what the first request after a scale from zero "
            "waits")


def packing_rows(c: ComponentPlan) -> list[list[str]]:
    return [[str(i), ", ".join(f"{n} x{k}" for n, k in sorted(inst.copies.items())),
             f"{inst.accelerators}/{c.packing.shape.accelerators}",
             f"{inst.memory_mb:,}/{c.packing.shape.memory_mb:,}",
             f"{inst.cpu_cores:g}/{c.packing.shape.cpu_cores:g}"]
            for i, inst in enumerate(c.packing.instances, 1)]


def component_lines(c: ComponentPlan, width: int = 80) -> list[str]:
    """The dry run's printout."""
    out = ["inference component:"]
    for line in [*summary(c), cold_start(c)]:
        out += wrap(line, width, initial_indent="  ", subsequent_indent="    ",
                    break_on_hyphens=False)
    others = f" with {', '.join(c.alongside)}" if c.alongside else ""
    out.append(f"packing at max copies{others} ({c.packing.instance_count} instance(s)):")
    head = ["#", "copies", "acc", "host MiB", "CPU"]
    rows = packing_rows(c)
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    for row in [head, *rows]:
        out.append("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True))
                   .rstrip())
    return out


def section(r: RunReport) -> list[Section]:
    c = r.component
    if c is None:
        return []
    others = f", with {', '.join(c.alongside)}" if c.alongside else ""
    return [Section("component", "Inference component", [
        Bullets([*summary(c), cold_start(c)]),
        Para(f"Packing of every component at its max copies{others}: "
             f"{c.packing.instance_count} instance(s) of {c.instance_type}"),
        Table(["instance", "copies", "accelerators", "host MiB", "CPU cores"],
              packing_rows(c))])]
