"""Benchmark metrics from per-request records: pure functions, exactly DESIGN.md's definitions.

Times in a RequestRecord are seconds on one monotonic clock (time.perf_counter); every latency
in a result is milliseconds. Only successful measured requests feed latency and throughput;
failed ones (errors, timeouts) count in `error_rate` and nowhere else, because a partial stream
says nothing about the latency a user of a working request feels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise

import numpy as np
from pydantic import BaseModel, Field

from lmiflow.bench.formulas import FORMULAS, MIN_SAMPLES, PERCENTILES
from lmiflow.bench.gate_spec import LATENCY_METRICS, GateSpec


class RequestRecord(BaseModel):
    """One request as the load generator saw it (perf_counter seconds)."""

    start: float
    first_token: float | None = Field(
        default=None, description="Arrival of the first token chunk with non-empty text."
    )
    token_times: list[float] = Field(
        default_factory=list, description="Arrival time of each token-bearing chunk (line)."
    )
    chunk_tokens: list[int] | None = Field(
        default=None,
        description="Tokens carried by each entry of token_times; None means one each (LMI "
        "streams one token per line).",
    )
    end: float | None = Field(default=None, description="Arrival of the last chunk (or failure).")
    output_tokens: int = 0
    error: str | None = None
    timed_out: bool = False
    generated_tokens_reported: int | None = Field(
        default=None, description="The server's own output count (LMI details.generated_tokens, "
        "OpenAI usage.completion_tokens)."
    )
    token_source: str = Field(
        "lines", description="Where output_tokens came from (bench.tokens.count_tokens)."
    )
    input_tokens: int | None = Field(
        default=None, description="Prompt tokens: the server's count, else the tokenizer's."
    )
    warmup: bool = False
    repeat: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out


class LatencyStats(BaseModel):
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    n: int = 0
    few_samples: list[str] = Field(
        default_factory=list,
        description="Percentiles computed from too few samples to mean much (see MIN_SAMPLES).",
    )


class LengthStats(BaseModel):
    """A distribution of request lengths in tokens."""

    n: int = 0
    mean: float | None = None
    min: int | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: int | None = None


class GeneratorStats(BaseModel):
    """How busy the load generator itself was during a level (the worst of its processes)."""

    loop_lag_p50_ms: float | None = None
    loop_lag_p99_ms: float | None = None
    loop_lag_max_ms: float | None = None
    cpu_pct: float | None = Field(default=None, description="Process CPU / wall time, % of a core.")
    processes: int = Field(1, description="Load-generator processes the level ran in.")


class RepeatStats(BaseModel):
    """One repeat of a level: the figures the regression gate compares across repeats."""

    requests: int = 0
    ttft_ms_p50: float | None = None
    tpot_ms_p50: float | None = None
    output_tokens_per_s: float | None = None


class LevelResult(BaseModel):
    concurrency: int = Field(description="Closed loop: requests in flight. Open loop: the cap.")
    rate_rps: float | None = Field(default=None, description="Open-loop Poisson arrival rate.")
    requests: int = Field(description="Measured requests attempted (warm-up excluded).")
    warmup_requests: int = 0
    completed: int = 0
    errors: int = Field(0, description="Failed measured requests (timeouts included).")
    timeouts: int = 0
    error_rate: float | None = None
    error_examples: list[str] = Field(default_factory=list)
    ttft_ms: LatencyStats = Field(default_factory=LatencyStats)
    tpot_ms: LatencyStats = Field(default_factory=LatencyStats)
    itl_ms: LatencyStats = Field(default_factory=LatencyStats)
    e2e_ms: LatencyStats = Field(default_factory=LatencyStats)
    chunk_itl_ms: LatencyStats = Field(
        default_factory=LatencyStats, description="Gaps between streamed chunks (lines)."
    )
    tpot_excluded_one_token: int = Field(
        0, description="Successful requests with one output token: no TPOT."
    )
    output_tokens: int = 0
    window_s: float | None = None
    output_tokens_per_s: float | None = None
    requests_per_min: float | None = None
    goodput: float | None = Field(default=None, description="Requests/s meeting every SLO gate.")
    goodput_per_min: float | None = None
    goodput_note: str | None = None
    usd_per_1m_output_tokens: float | None = None
    input_length: LengthStats = Field(default_factory=LengthStats)
    output_length: LengthStats = Field(default_factory=LengthStats)
    expected_output_tokens: int | None = Field(
        default=None, description="Fixed-length run: every output should be this long."
    )
    output_length_mismatches: int = Field(
        0, description="Successful requests whose output length differs from the expected."
    )
    output_length_examples: list[int] = Field(default_factory=list)
    token_sources: dict[str, int] = Field(
        default_factory=dict, description="Successful requests per token-count source."
    )
    token_count_mismatches: int = 0
    token_count_checked: int = Field(0, description="Requests whose server reported a count.")
    token_count_differences: dict[str, int] = Field(
        default_factory=dict, description="server count − lmiflow's count: requests per value."
    )
    saturated: bool = Field(False, description="Open loop: latency grows without bound here.")
    saturation_reason: str | None = None
    repeats: list[RepeatStats] = Field(default_factory=list)
    generator_saturated: bool = False
    generator_saturated_reason: str | None = None
    generator: GeneratorStats | None = None


class BenchSettings(BaseModel):
    """What was run; enough to rerun it. `source` never holds URL credentials or a query."""

    source: str = ""
    client: str = Field(
        "", description="What sent the requests: socket (bench.http) or target.invoke_stream."
    )
    mode: str = "closed"
    requests: int = 0
    warmup: int = 0
    ramp_up_s: float = 0.0
    max_new_tokens: int = 0
    input_tokens: int = 0
    prompt_tokens_exact: bool = Field(False, description="Prompt built with the model tokenizer.")
    api: str = "inputs"
    prompts_file: str | None = None
    tokenizer: str | None = Field(default=None, description="Where the model tokenizer came from.")
    fixed_length: str | None = Field(
        default=None, description="The parameter that fixed output lengths (None: outputs end at "
        "EOS).",
    )
    seed: int | None = None
    repeats: int = 1
    interleaved_with: list[str] = Field(
        default_factory=list,
        description="Endpoints measured in the same run, level by level (repeats paired).",
    )
    timeout_s: float = 0
    usd_per_hour: float | None = None
    instances: int = 1


class BenchResult(BaseModel):
    """`lmiflow bench --json` and the report's `benchmark` section."""

    levels: list[LevelResult] = Field(default_factory=list)
    settings: BenchSettings = Field(default_factory=BenchSettings)
    saturation_rps: float | None = Field(
        default=None, description="Open loop: the lowest rate at which latency grew without "
        "bound (None: no rate saturated the endpoint).",
    )
    notes: list[str] = Field(default_factory=list)
    production: BenchResult | None = Field(
        default=None, description="Production, measured in the same run, interleaved level by "
        "level with this endpoint (regression.compare_with: production_now).",
    )
    formulas: dict[str, str] = Field(default_factory=lambda: dict(FORMULAS))

    def level(self, concurrency: int) -> LevelResult | None:
        """The closed-loop level at this concurrency."""
        return next((lv for lv in self.levels
                     if lv.concurrency == concurrency and lv.rate_rps is None), None)

    def rate_level(self, rate_rps: float) -> LevelResult | None:
        return next((lv for lv in self.levels if lv.rate_rps == rate_rps), None)


def latency_stats(samples_ms: Sequence[float]) -> LatencyStats:
    """mean and linear percentiles; `few_samples` names the percentiles that n cannot support."""
    n = len(samples_ms)
    if n == 0:
        return LatencyStats(n=0, few_samples=[f"p{p}" for p in PERCENTILES])
    arr = np.asarray(samples_ms, dtype=float)
    pct = np.percentile(arr, PERCENTILES, method="linear")
    values = {f"p{p}": float(v) for p, v in zip(PERCENTILES, pct, strict=True)}
    few = [name for name, need in MIN_SAMPLES.items() if n < need]
    return LatencyStats(mean=float(arr.mean()), n=n, few_samples=few, **values)


def ttft_s(rec: RequestRecord) -> float | None:
    return None if rec.first_token is None else rec.first_token - rec.start


def e2e_s(rec: RequestRecord) -> float | None:
    return None if rec.end is None else rec.end - rec.start


def tpot_s(rec: RequestRecord) -> float | None:
    """(E2E − TTFT) / (tokens − 1); None for one-token outputs (nothing after the first)."""
    ttft, e2e = ttft_s(rec), e2e_s(rec)
    if ttft is None or e2e is None or rec.output_tokens < 2:
        return None
    return (e2e - ttft) / (rec.output_tokens - 1)


def itl_s(rec: RequestRecord) -> list[float]:
    """Per-token gaps: a k-token chunk spreads its gap over k tokens (see FORMULAS)."""
    times = rec.token_times
    if not times:
        return []
    counts = rec.chunk_tokens or [1] * len(times)
    gaps = [0.0] * max(0, counts[0] - 1)
    for prev, cur, k in zip(times, times[1:], counts[1:], strict=False):
        if k <= 0:
            continue
        gaps.extend([(cur - prev) / k] * k)
    return gaps


def chunk_gaps_s(rec: RequestRecord) -> list[float]:
    """Chunk ITL: the gaps between streamed chunks (lines) as they arrived."""
    t = rec.token_times
    return [b - a for a, b in pairwise(t)]


def _request_value(metric: str, stat: str, rec: RequestRecord) -> float | None:
    """A request's own value of a latency metric in ms, for per-request SLO (goodput) checks."""
    if metric == "ttft_ms":
        v = ttft_s(rec)
    elif metric == "tpot_ms":
        v = tpot_s(rec)
    elif metric == "e2e_ms":
        v = e2e_s(rec)
    else:  # itl_ms: the request's own gaps at the gate's statistic
        gaps = itl_s(rec)
        if not gaps:
            return None
        v = float(np.mean(gaps)) if stat == "mean" else float(
            np.percentile(gaps, int(stat[1:]), method="linear")
        )
    return None if v is None else v * 1000.0


_OPS = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def compare(observed: float, op: str, threshold: float) -> bool:
    return _OPS[op](observed, threshold)


def meets_slos(rec: RequestRecord, gates: Iterable[GateSpec]) -> bool:
    """A successful request meets every latency gate by its own value. A gate whose metric the
    request does not have (TPOT of a one-token output) does not count against it."""
    if not rec.ok:
        return False
    for g in gates:
        v = _request_value(g.metric, g.stat, rec)
        if v is not None and not compare(v, g.op, g.threshold):
            return False
    return True


def _slo_gates(gates: Iterable[GateSpec] | None, concurrency: int | None) -> list[GateSpec]:
    """Latency gates for a closed-loop level at `concurrency`, or an open-loop level (None):
    a gate pinned to a concurrency applies to that closed-loop level only."""
    return [
        g for g in (gates or [])
        if g.metric in LATENCY_METRICS and g.concurrency in (None, concurrency)
    ]


def length_stats(values: Sequence[int]) -> LengthStats:
    if not values:
        return LengthStats()
    arr = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(arr, (50, 90, 99), method="linear")
    return LengthStats(n=len(values), mean=float(arr.mean()), min=int(arr.min()),
                       p50=float(p50), p90=float(p90), p99=float(p99), max=int(arr.max()))


def _window(records: Sequence[RequestRecord]) -> float | None:
    """First start to last end of each repeat, summed: repeats of a level run at different
    times (between other levels), and the gaps between them are no one's throughput."""
    total = 0.0
    for rep in sorted({r.repeat for r in records}):
        group = [r for r in records if r.repeat == rep]
        ends = [r.end for r in group if r.end is not None]
        if group and ends:
            total += max(0.0, max(ends) - min(r.start for r in group))
    return total or None


def _repeat_stats(measured: Sequence[RequestRecord]) -> list[RepeatStats]:
    reps = sorted({r.repeat for r in measured})
    if len(reps) < 2:
        return []
    out = []
    for rep in reps:
        group = [r for r in measured if r.repeat == rep]
        ok = [r for r in group if r.ok]
        ttft = [v * 1000 for r in ok if (v := ttft_s(r)) is not None]
        tpot = [v * 1000 for r in ok if (v := tpot_s(r)) is not None]
        window = _window(group)
        out.append(RepeatStats(
            requests=len(group),
            ttft_ms_p50=float(np.median(ttft)) if ttft else None,
            tpot_ms_p50=float(np.median(tpot)) if tpot else None,
            output_tokens_per_s=(sum(r.output_tokens for r in ok) / window) if window else None,
        ))
    return out


def open_loop_saturation(
    records: Sequence[RequestRecord], *, growth_limit: float = 1.5, min_requests: int = 8
) -> str | None:
    """Why an open-loop level looks past saturation; None when it kept up. Past saturation
    requests queue, so each waits longer than the one before: TTFT of the later half of the
    arrivals exceeds the earlier half's by more than growth_limit×."""
    ok = sorted((r for r in records if r.ok and not r.warmup), key=lambda r: r.start)
    ttft = [v * 1000 for r in ok if (v := ttft_s(r)) is not None]
    if len(ttft) < min_requests:
        return None
    half = len(ttft) // 2
    early, late = float(np.median(ttft[:half])), float(np.median(ttft[half:]))
    if early > 0 and late / early > growth_limit:
        return (f"TTFT p50 grew from {early:.0f} ms (first half of the arrivals) to "
                f"{late:.0f} ms (second half): requests queue faster than they are served")
    return None


def compute_level(
    records: Sequence[RequestRecord],
    concurrency: int,
    *,
    rate_rps: float | None = None,
    gates: Iterable[GateSpec] | None = None,
    usd_per_hour: float | None = None,
    instances: int = 1,
    generator: GeneratorStats | None = None,
    saturated_reason: str | None = None,
    expected_output_tokens: int | None = None,
    cap_waits: int = 0,
) -> LevelResult:
    """All metrics of one level. Warm-up records are dropped here, so callers may pass all.
    expected_output_tokens: a fixed-length run's output length, checked per request.
    cap_waits: open-loop arrivals that found the in-flight cap full (the client held them)."""
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.ok]
    failed = [r for r in measured if not r.ok]
    attempted = len(measured)

    examples: list[str] = []
    for r in failed:
        msg = (r.error or "timeout")[:300]
        if msg not in examples:
            examples.append(msg)
        if len(examples) == 3:
            break

    ttft = [v * 1000 for r in ok if (v := ttft_s(r)) is not None]
    e2e = [v * 1000 for r in ok if (v := e2e_s(r)) is not None]
    tpot = [v * 1000 for r in ok if (v := tpot_s(r)) is not None]
    itl = [g * 1000 for r in ok for g in itl_s(r)]
    chunk = [g * 1000 for r in ok for g in chunk_gaps_s(r)]
    one_token = sum(1 for r in ok if r.output_tokens < 2)

    window = _window(measured)
    out_tokens = sum(r.output_tokens for r in ok)
    tps = out_tokens / window if window else None
    rpm = len(ok) / window * 60 if window else None

    checked = [r for r in ok if r.generated_tokens_reported is not None]
    diffs: dict[str, int] = {}
    for r in checked:
        d = r.generated_tokens_reported - r.output_tokens  # type: ignore[operator]
        if d:
            key = f"{d:+d}"
            diffs[key] = diffs.get(key, 0) + 1
    sources: dict[str, int] = {}
    for r in ok:
        sources[r.token_source] = sources.get(r.token_source, 0) + 1
    wrong_length = [r.output_tokens for r in ok
                    if expected_output_tokens is not None
                    and r.output_tokens != expected_output_tokens]

    slo = _slo_gates(gates, concurrency if rate_rps is None else None)
    goodput = goodput_min = None
    note = None
    if not slo:
        note = "goodput needs latency gates (ttft_ms, tpot_ms, itl_ms, e2e_ms)"
    elif window:
        good = sum(1 for r in ok if meets_slos(r, slo))
        goodput, goodput_min = good / window, good / window * 60

    cost = None
    if usd_per_hour is not None and tps:
        cost = usd_per_hour * instances / (tps * 3600) * 1e6

    open_reason = None
    if rate_rps is not None:
        reasons = [x for x in (
            open_loop_saturation(records),
            f"{cap_waits} arrivals found all {concurrency} in-flight slots busy" if cap_waits
            else None,
        ) if x]
        open_reason = "; ".join(reasons) or None

    return LevelResult(
        concurrency=concurrency,
        rate_rps=rate_rps,
        requests=attempted,
        warmup_requests=len(records) - attempted,
        completed=len(ok),
        errors=len(failed),
        timeouts=sum(1 for r in failed if r.timed_out),
        error_rate=(len(failed) / attempted) if attempted else None,
        error_examples=examples,
        ttft_ms=latency_stats(ttft),
        tpot_ms=latency_stats(tpot),
        itl_ms=latency_stats(itl),
        e2e_ms=latency_stats(e2e),
        chunk_itl_ms=latency_stats(chunk),
        tpot_excluded_one_token=one_token,
        output_tokens=out_tokens,
        window_s=window,
        output_tokens_per_s=tps,
        requests_per_min=rpm,
        goodput=goodput,
        goodput_per_min=goodput_min,
        goodput_note=note,
        usd_per_1m_output_tokens=cost,
        input_length=length_stats([r.input_tokens for r in ok if r.input_tokens is not None]),
        output_length=length_stats([r.output_tokens for r in ok]),
        expected_output_tokens=expected_output_tokens,
        output_length_mismatches=len(wrong_length),
        output_length_examples=sorted(set(wrong_length))[:5],
        token_sources=sources,
        token_count_mismatches=sum(diffs.values()),
        token_count_checked=len(checked),
        token_count_differences=diffs,
        saturated=open_reason is not None,
        saturation_reason=open_reason,
        repeats=_repeat_stats(measured),
        generator_saturated=saturated_reason is not None,
        generator_saturated_reason=saturated_reason,
        generator=generator,
    )


def saturation_rate(levels: Sequence[LevelResult]) -> float | None:
    """The lowest open-loop rate whose level saturated."""
    rates = sorted(lv.rate_rps for lv in levels if lv.rate_rps is not None and lv.saturated)
    return rates[0] if rates else None


def saturation_reason(
    stats: GeneratorStats,
    *,
    max_lag_p99_ms: float = 10.0,
    max_lag_p50_ms: float = 2.0,
    max_cpu_pct: float = 85.0,
) -> str | None:
    """Why the generator, not the endpoint, may have set the pace; None when it kept up.

    Event-loop lag delays every timestamp by that much; a Python process near one full core
    (the GIL) cannot take more work, so it queues its own requests. Lag with little CPU of
    our own means other processes held the CPU: the figures are just as suspect."""
    reasons = []
    lag99, lag50, cpu = stats.loop_lag_p99_ms, stats.loop_lag_p50_ms, stats.cpu_pct
    if (lag99 is not None and lag99 > max_lag_p99_ms) or (
        lag50 is not None and lag50 > max_lag_p50_ms
    ):
        msg = f"event-loop lag p50 {lag50 or 0:.1f} ms, p99 {lag99 or 0:.1f} ms " \
              f"(limits {max_lag_p50_ms:g}, {max_lag_p99_ms:g} ms): timestamps late by that much"
        if cpu is not None and cpu < 50:
            msg += f"; the generator used only {cpu:.0f}% of a core, so the machine was busy"
        reasons.append(msg)
    if cpu is not None and cpu > max_cpu_pct:
        reasons.append(f"generator CPU {cpu:.0f}% of a core > {max_cpu_pct:.0f}%")
    return "; ".join(reasons) or None
