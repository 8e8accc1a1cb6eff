"""The report's sections, in reading order, built from the typed RunReport.

Every section copes with its part of the run missing (a run that failed early, a dry run): it
then says "not run".
"""

from __future__ import annotations

from lmiflow.bench.formulas import MIN_SAMPLES
from lmiflow.bench.metrics import BenchResult, LatencyStats, LengthStats
from lmiflow.report import components
from lmiflow.report.document import (
    NOT_RUN,
    Block,
    Bullets,
    Code,
    Para,
    Plot,
    Section,
    Table,
    duration,
    fmt,
    gb,
    mark,
    secs,
    usd,
    verdict,
)
from lmiflow.report.model import PredictedVsMeasured, RunReport
from lmiflow.report.outcome import sig
from lmiflow.sizing.catalog import CPU
from lmiflow.sizing.planner import Option
from lmiflow.targets.aws_requests import AwsRequest, compact

STEP_ICONS = {"completed": "✅", "failed": "❌", "skipped": "⏭"}


def title(report: RunReport) -> str:
    return f"lmiflow run report: {fmt(report.endpoint)}"


def devices(option: Option) -> str:
    """'4x A10G', '1x CPU': what the option computes on, by name (a CPU is not a GPU)."""
    return f"{option.gpu_count}x {option.accelerator.removeprefix('NVIDIA ')}"


def option_name(option: Option) -> str:
    copies = "copy" if option.model_copies == 1 else "copies"
    price = "" if option.usd_per_hour is None else f", {usd(option.usd_per_hour)}/h"
    return (
        f"{fmt(option.instance_type)} ({devices(option)}, "
        f"TP {fmt(option.tensor_parallel_degree)}, {fmt(option.model_copies)} {copies}{price})"
    )


def _same(a: Option | None, b: Option) -> bool:
    return a is not None and (a.instance_type, a.tensor_parallel_degree) == (
        b.instance_type, b.tensor_parallel_degree)


def summary(r: RunReport) -> Section:
    chosen = r.plan.chosen if r.plan else None
    rows = [
        ["status", r.status],
        ["endpoint (production)", fmt(r.endpoint)],
        ["candidate endpoint", fmt(r.candidate_endpoint)],
        ["target", fmt(r.target)],
        ["model", f"{fmt(r.model.id)} @ {fmt(r.model.revision)}"],
        ["instance", option_name(chosen) if chosen else "—"],
        ["image", fmt(r.image_uri)],
        ["run id", fmt(r.run_id)],
        ["started / finished", f"{fmt(r.started_at)} / {fmt(r.finished_at)}"],
        ["duration", duration(r.started_at, r.finished_at)],
        ["gate", verdict(r.gate.passed if r.gate else None)],
    ]
    blocks: list[Block] = []
    if r.outcome:
        # The verdict in words first: what happened to production, why, what to try.
        blocks.append(Para(r.outcome.headline, strong=True))
        if r.outcome.reasons or r.outcome.next_steps:
            blocks.append(Bullets([*r.outcome.reasons,
                                   *(f"Next: {step}" for step in r.outcome.next_steps)]))
    if r.failed_step:
        blocks.append(Para(f"Failed step: {fmt(r.failed_step)}", strong=True))
    if r.error:
        blocks.append(Code(r.error))
    blocks.append(Table(["", "value"], rows))
    # What fetch_config learnt about the model (only the fields it set).
    known = r.model.model_dump(mode="json", exclude={"id", "revision"})
    if known:
        blocks.append(Table(["model", "value"], [[k, fmt(v)] for k, v in known.items()]))
    return Section("summary", f"Summary: {r.status}", blocks)


def steps(r: RunReport) -> Section:
    if not r.steps:
        return Section("steps", "Steps", [Para(NOT_RUN)])
    rows = [
        [
            f"{STEP_ICONS.get(s.status, '')} {s.status}".strip(),
            s.name,
            secs(s.seconds) if s.status != "skipped" else "—",
            fmt(s.summary),
        ]
        for s in r.steps
    ]
    total = sum(s.seconds for s in r.steps)
    return Section("steps", "Steps", [
        Table(["status", "step", "seconds", "summary"], rows),
        Para(f"Steps' own time: {total:,.1f} s."),
        Plot("step_timeline", "Step timeline"),
    ])


def memory(r: RunReport) -> Section:
    plan = r.plan
    if plan is None:
        return Section("memory", "Memory", [Para(NOT_RUN)])
    whole, chosen = plan.memory, plan.chosen
    per_gpu = chosen.per_gpu if chosen else {}
    blocks: list[Block] = []
    if chosen:
        blocks.append(Para(f"Chosen: {option_name(chosen)}"))
        if plan.chosen_reason:
            blocks.append(Para(f"Why: {plan.chosen_reason}"))
    else:
        blocks.append(Para(f"No option chosen: {fmt(plan.chosen_reason)}", strong=True))
    usable = chosen.usable_bytes_per_gpu if chosen else None
    required = chosen.per_gpu_required_bytes if chosen else None
    rows = [
        ["weights", gb(whole.weights_bytes), gb(per_gpu.get("weights_bytes"))],
        ["KV cache", gb(whole.kv_cache_bytes), gb(per_gpu.get("kv_cache_bytes"))],
        ["overhead", gb(whole.overhead_bytes), gb(per_gpu.get("overhead_bytes"))],
        ["total / required", gb(whole.total_bytes), gb(required)],
        ["usable", "—", gb(usable)],
        ["headroom", "—", gb(usable - required if chosen else None)],
    ]
    blocks.append(Table(["component", "whole model", "per GPU (chosen)"], rows))
    blocks.append(Plot("memory_per_gpu", "Memory per GPU by component"))
    return Section("memory", "Memory", blocks)


OPTION_HEADERS = ["#", "instance", "GPUs", "GPU memory", "TP", "copies", "fits", "per-GPU need",
                  "$/h", "max concurrency", "reason"]


def options(r: RunReport) -> Section:
    if r.plan is None or not r.plan.options:
        return Section("options", "Instance options", [Para(NOT_RUN)])
    chosen = r.plan.chosen
    rows = [
        [
            f"{rank}{' ★' if _same(chosen, o) else ''}",
            fmt(o.instance_type),
            devices(o),
            gb(o.gpu_memory_bytes),
            fmt(o.tensor_parallel_degree),
            fmt(o.model_copies),
            mark(o.fits),
            gb(o.per_gpu_required_bytes),
            usd(o.usd_per_hour),
            # On a CPU memory bounds nothing a person plans by (see sizing.catalog.CPU).
            "—" if o.accelerator == CPU else fmt(o.max_concurrency),
            fmt(o.reason),
        ]
        for rank, o in enumerate(r.plan.options, 1)
    ]
    fit = sum(1 for o in r.plan.options if o.fits)
    return Section("options", "Instance options", [
        Para(f"{len(rows)} options in the planner's rank order, {fit} fit; ★ marks the chosen "
             "one. The reason column says why the others do not fit."),
        Table(OPTION_HEADERS, rows),
        *([Plot("options_vs_price", "Instance options vs price")]
          if any(o.usd_per_hour is not None for o in r.plan.options) else []),
    ])


def serving_properties(r: RunReport) -> Section:
    if not r.serving_properties:
        return Section("serving-properties", "serving.properties", [Para(NOT_RUN)])
    return Section("serving-properties", "serving.properties",
                   [Code(r.serving_properties, "properties")])


def endpoint(r: RunReport) -> list[Section]:
    """The production variant's host (AMI, routing) and the promotion plan with its peak."""
    lines: list[str] = []
    if r.host is not None:
        lines += [f"host AMI: {r.host.inference_ami_version} ({r.host.why})",
                  f"routing: {r.host.routing_strategy}"]
        if r.host.warning:
            lines.append(f"warning: {r.host.warning}")
    pr = r.promotion_plan
    if pr is not None:
        peak = ", ".join(f"{n} x {t}" for t, n in pr.peak_instances.items())
        lines += [f"promotion: {pr.strategy}" + (f", first step {pr.traffic_step}"
                                                 if pr.traffic_step else "")
                  + f", old fleet kept {pr.termination_wait_s} s after the shift",
                  "rollback alarms (must exist): " + (", ".join(pr.alarms) or "none"),
                  f"peak fleet: {peak} ({pr.peak_assumption})"
                  + (f"; quota {', '.join(pr.quota_names.values())}" if pr.quota_names
                     else "")]
    return [Section("endpoint", "Endpoint and promotion", [Bullets(lines)])] if lines else []


def autoscaling(r: RunReport) -> list[Section]:
    """The scaling numbers the plan gave and why; what the autoscale step set up."""
    a = r.autoscaling
    if a is None:
        return []
    table = Table(["instances", "target per copy", "copies per instance",
                   "target per instance", "scale-in cooldown", "scale-out cooldown"],
                  [[f"{a.min_instances}..{a.max_instances} (starts at {a.initial_instances})",
                    f"{a.target_per_copy} ({a.source})", str(a.copies_per_instance),
                    f"{a.target_per_instance:g}", f"{a.scale_in_cooldown_s} s",
                    f"{a.scale_out_cooldown_s} s"]])
    blocks: list[Block] = [table, Bullets(a.why)]
    applied = r.autoscaling_applied
    blocks.append(Para("Set up after promotion: " + "; ".join(applied)) if applied
                  else Para(f"Set up after promotion: {NOT_RUN}"))
    return [Section("autoscaling", "Autoscaling", blocks)]


def weights(r: RunReport) -> list[Section]:
    """Where the weights come from, who may read them, and what stage_weights uploaded."""
    if r.weights is None:
        return []
    blocks: list[Block] = [Bullets(r.weights.summary())]
    if r.staging is not None:
        blocks += [Para(f"Staged: {r.staging.summary()}", strong=True), Table(
            ["file", "size", "status", "seconds"],
            [[f.name, f"{f.size / 1e6:,.1f} MB", f.status, secs(f.seconds)]
             for f in r.staging.files])]
    return [Section("weights", "Weights", blocks)]


def aws_requests(r: RunReport) -> list[Section]:
    """The AWS requests (compact; report.json has them in full) and the IAM policies."""
    if not r.requests:
        return []
    import json

    lines = compact([AwsRequest(**q.model_dump()) for q in r.requests])
    out = [Section("aws-requests", "AWS requests", [
        Para(f"{len(r.requests)} requests, in the order the run sends them, each valid for "
             "botocore's service model; secrets masked. Full parameters: report.json."),
        Code("\n".join(lines))])]
    policies = (("The runner's IAM policy", r.iam_policy),
                ("The execution role's", r.execution_role_policy))
    blocks: list[Block] = [b for title, doc in policies if doc
                           for b in (Para(title, strong=True),
                                     Code(json.dumps(doc, indent=2), "json"))]
    if blocks:
        out.append(Section("iam", "IAM permissions", blocks))
    return out


def smoke_test(r: RunReport) -> Section:
    smoke = r.smoke_test
    if smoke is None:
        return Section("smoke-test", "Smoke test", [Para(NOT_RUN)])
    return Section("smoke-test", "Smoke test", [
        Para(f"{verdict(smoke.passed)} in {fmt(smoke.seconds)} s", strong=True),
        Code(smoke.output),
    ])


def _pct(stats: LatencyStats, stat: str) -> str:
    value = getattr(stats, stat)
    if value is None:
        return "—"
    return fmt(value) + (" †" if stat in stats.few_samples else "")


LEVEL_HEADERS = ["concurrency", "requests", "errors", "error rate", "TTFT p50", "TTFT p90",
                 "TTFT p99", "TPOT p50", "TPOT p90", "TPOT p99", "ITL p50", "ITL p99", "E2E p50",
                 "E2E p99", "n", "tokens/s", "req/min", "goodput/s", "$/1M tokens"]


def _levels_table(bench: BenchResult) -> tuple[Table, bool]:
    rows = [
        [
            fmt(lv.concurrency),
            fmt(lv.requests),
            fmt(lv.errors),
            "—" if lv.error_rate is None else f"{lv.error_rate:.2%}",
            *(_pct(getattr(lv, m), s) for m in ("ttft_ms", "tpot_ms") for s in ("p50", "p90",
                                                                                  "p99")),
            _pct(lv.itl_ms, "p50"),
            _pct(lv.itl_ms, "p99"),
            _pct(lv.e2e_ms, "p50"),
            _pct(lv.e2e_ms, "p99"),
            fmt(lv.ttft_ms.n),
            fmt(lv.output_tokens_per_s),
            fmt(lv.requests_per_min),
            fmt(lv.goodput),
            usd(lv.usd_per_1m_output_tokens, 3),
        ]
        for lv in bench.levels
    ]
    few = any(cell.endswith("†") for row in rows for cell in row)
    return Table(LEVEL_HEADERS, rows), few


def _span(dist: LengthStats) -> str:
    """A length distribution: one number when every request had it, else p50 (min–max)."""
    if not dist.n:
        return "—"
    if dist.min == dist.max:
        return fmt(dist.min)
    return f"{fmt(dist.p50)} ({fmt(dist.min)}–{fmt(dist.max)})"


LENGTH_HEADERS = ["level", "input tokens", "output tokens", "fixed length", "counted by",
                  "server count − ours"]


def _lengths_table(bench: BenchResult) -> Table:
    """Request lengths in the model's tokens and where the output counts came from: a
    fixed-length run shows every output at the configured length, or how many were not."""
    rows = []
    for lv in bench.levels:
        level = f"{fmt(lv.rate_rps)}/s" if lv.rate_rps is not None else fmt(lv.concurrency)
        expected, wrong = lv.expected_output_tokens, lv.output_length_mismatches
        rows.append([
            level, _span(lv.input_length), _span(lv.output_length),
            "—" if expected is None else (f"all {expected}" if not wrong
                                          else f"{wrong} not {expected}"),
            ", ".join(f"{k} {v}" for k, v in lv.token_sources.items()) or "—",
            ", ".join(f"{k}: {v}" for k, v in lv.token_count_differences.items()) or "none",
        ])
    return Table(LENGTH_HEADERS, rows)


def benchmark(r: RunReport) -> Section:
    bench = r.benchmark
    if bench is None or not bench.levels:
        return Section("benchmark", "Benchmark", [Para(NOT_RUN)])
    table, few = _levels_table(bench)
    blocks: list[Block] = [
        Para("Latencies in ms; n is the number of successful requests "
             "(ITL has one sample per token gap)."),
        table,
    ]
    if few:
        limits = ", ".join(f"{stat} < {n}" for stat, n in MIN_SAMPLES.items())
        blocks.append(Para(f"† too few samples for this percentile to mean much ({limits})."))
    settings = bench.settings
    blocks += [
        Para(f"Request lengths (api {settings.api}; "
             + (f"outputs fixed through {settings.fixed_length}" if settings.fixed_length
                else "outputs end at EOS")
             + (f"; tokenizer {settings.tokenizer}" if settings.tokenizer else "") + "):"),
        _lengths_table(bench),
        *([Bullets(list(bench.notes))] if bench.notes else []),
        Plot("latency_percentiles", "Latency percentiles vs concurrency"),
        Plot("throughput_and_cost", "Throughput and cost vs concurrency"),
    ]
    if r.baseline is not None and r.baseline.levels:
        base_table, _ = _levels_table(r.baseline)
        blocks += [Para("Baseline (the production endpoint):", strong=True), base_table]
    return Section("benchmark", "Benchmark", blocks)


CALIBRATION_HEADERS = ["concurrency", "tokens in / out", "TTFT p50 predicted", "measured",
                       "error", "TPOT p50 predicted", "measured", "error", "calibrated"]


def _ms(value: float | None) -> str:
    return "—" if value is None else sig(value)


def _error(pct: float | None) -> str:
    return "—" if pct is None else f"{pct:+.0f} %"


def _mape(m: dict[str, float | None]) -> str:
    return ", ".join(f"{label} {'—' if m.get(k) is None else f'{m[k]:.0f} %'}"
                     for k, label in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT")))


def calibration_section(c: PredictedVsMeasured | None) -> Section:
    """The benchmark next to the latency model's prediction for the chosen option (ms; error
    in % of measured), the factors behind the prediction, and what the store learnt."""
    name = "Predicted vs measured"
    if c is None:
        return Section("predicted-vs-measured", name, [Para(NOT_RUN)])
    blocks: list[Block] = []
    if c.accelerator:
        image = f", image {c.image_version}" if c.image_version else ""
        blocks.append(Para(f"{c.accelerator}, TP {fmt(c.tensor_parallel_degree)}, "
                           f"{fmt(c.engine)}{image}: predictions from {fmt(c.fit)}."))
    if c.levels:
        blocks.append(Table(CALIBRATION_HEADERS, [
            [fmt(lv.concurrency), f"{fmt(lv.input_tokens)} / {fmt(lv.output_tokens)}",
             _ms(lv.predicted_ttft_ms), _ms(lv.measured_ttft_ms), _error(lv.ttft_error_pct),
             _ms(lv.predicted_tpot_ms), _ms(lv.measured_tpot_ms), _error(lv.tpot_error_pct),
             fmt(lv.calibrated)]
            for lv in c.levels]))
    if c.recorded:
        text = f"{c.recorded} record(s) appended to {c.store}."
        if c.refit:
            text += (f" Refit on {c.refit.records} record(s) of {c.refit.accelerator} / "
                     f"{c.refit.engine} (what the next plan uses): error "
                     f"{_mape(c.refit.mape_before)} with the defaults, "
                     f"{_mape(c.refit.mape_after)} fitted.")
        blocks.append(Para(text))
    if c.notes:
        blocks.append(Bullets(list(c.notes)))
    return Section("predicted-vs-measured", name, blocks or [Para(NOT_RUN)])


def predicted_vs_measured(r: RunReport) -> Section:
    return calibration_section(r.calibration)


GATE_HEADERS = ["", "kind", "metric", "stat", "concurrency", "op", "threshold", "observed",
                "margin"]


def gate(r: RunReport) -> Section:
    if r.gate is None:
        return Section("gate", "Gate", [Para(NOT_RUN)])
    rows = [
        [
            mark(c.passed),
            fmt(c.kind),
            fmt(c.metric),
            fmt(c.stat),
            fmt(c.concurrency) if c.concurrency is not None else "all",
            fmt(c.op),
            fmt(c.threshold),
            fmt(c.observed),
            fmt(c.margin),
        ]
        for c in r.gate.checks
    ]
    blocks: list[Block] = [Para(verdict(r.gate.passed), strong=True)]
    blocks.append(Table(GATE_HEADERS, rows) if rows else Para("no checks"))
    return Section("gate", "Gate", blocks)


def formulas(r: RunReport) -> Section:
    if r.benchmark is None or not r.benchmark.formulas:
        return Section("formulas", "Metric formulas", [Para(NOT_RUN)])
    return Section("formulas", "Metric formulas",
                   [Bullets([f"{k}: {v}" for k, v in r.benchmark.formulas.items()])])


def versions(r: RunReport) -> Section:
    rows = [[k, fmt(v)] for k, v in r.versions.model_dump(mode="json").items()]
    return Section("versions", "Versions", [Table(["component", "version"], rows)])


def build_sections(report: RunReport) -> list[Section]:
    """The report's sections in reading order (shared by the Markdown and HTML renderers)."""
    head = [builder(report) for builder in (summary, steps, memory, options,
                                            serving_properties)]
    tail = [builder(report) for builder in (smoke_test, benchmark, predicted_vs_measured, gate,
                                            formulas, versions)]
    return [*head, *endpoint(report), *autoscaling(report), *components.section(report),
            *weights(report),
            *aws_requests(report), *tail]
