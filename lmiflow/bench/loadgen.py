"""The load generator: concurrency sweeps (closed loop) and Poisson arrivals (open loop)
against an LMI or OpenAI-compatible URL, or a named endpoint of a Target.

Accuracy first. Every request is serialized before its level starts; the clock is read in the
socket's read callback (bench.http) and the stream is parsed and its tokens counted only after
the level (bench.records), so nothing but a timestamp sits between a byte and its time. Levels
too big for one event loop run in several processes (bench.runner). Each level watches its own
event-loop lag and CPU, so a level where the generator, not the endpoint, set the pace is
flagged `generator_saturated`.

Gate runs are reproducible: greedy decoding, a fixed seed, and every output exactly
max_new_tokens long through the first fixed-length parameter the endpoint accepts (a probe
request tries them in turn: bench.apis.FIXED_LENGTH); each request's output length is checked.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field

from lmiflow.bench.apis import CHAT_APIS, FIXED_LENGTH, ApiName, payload
from lmiflow.bench.gate_spec import GateSpec
from lmiflow.bench.http import RawResponse
from lmiflow.bench.metrics import (
    BenchResult,
    BenchSettings,
    RequestRecord,
    compute_level,
    saturation_rate,
    saturation_reason,
)
from lmiflow.bench.prompts import Prompt, for_api, load_prompts_file, synthetic_prompts
from lmiflow.bench.records import to_record
from lmiflow.bench.runner import (
    LevelPlan,
    auto_processes,
    run_in_processes,
    run_plan,
    silent,
    stopped_answering,
)
from lmiflow.bench.transports import Req, TargetTransport, Transport, UrlTransport
from lmiflow.errors import NotAnswering

if TYPE_CHECKING:
    from lmiflow.targets.base import Target

ProgressFn = Callable[[int, int, int], None]
PROBE_ATTEMPTS = 3


class LoadConfig(BaseModel):
    """One benchmark run: what to send and how hard."""

    concurrency: list[int] = Field(default_factory=lambda: [1], description="Closed-loop levels.")
    rates: list[float] = Field(
        default_factory=list,
        description="Open-loop levels: Poisson arrival rates (requests/s), run after the "
        "closed-loop ones.",
    )
    max_concurrency: int = Field(
        256, ge=1, description="Open loop: cap on requests in flight (the level's concurrency)."
    )
    duration_s: float | None = Field(
        default=None, gt=0,
        description="Open loop: stop sending arrivals after this many seconds (bounds a level "
        "whose rate is low or whose requests are many).",
    )
    requests: int = Field(16, ge=1, description="Measured requests per level and repeat.")
    warmup: int = Field(2, ge=0, description="Requests per level issued first and excluded.")
    repeats: int = Field(
        1, ge=1, le=20,
        description="Run the whole sweep this many times (levels interleaved), so the "
        "regression gate can tell a change from the machine's noise.",
    )
    max_new_tokens: int = Field(64, ge=1)
    input_tokens: int = Field(128, ge=1)
    api: ApiName = Field("inputs", description="Request form (bench.apis).")
    model: str | None = Field(default=None, description="OpenAI APIs: the `model` field.")
    prompts_file: str | None = Field(
        default=None, description="JSONL prompts to replay instead of synthetic ones."
    )
    fixed_length: bool = Field(
        True, description="Ask for outputs of exactly max_new_tokens (ignore EOS), greedy, "
        "with a fixed seed, and check every output's length.",
    )
    timeout_s: float = Field(120.0, gt=0, description="Per request, first byte to last line.")
    usd_per_hour: float | None = Field(default=None, ge=0)
    instances: int = Field(1, ge=1)
    ramp_up_s: float = Field(
        0.0, ge=0,
        description="Closed loop: start the workers evenly over this many seconds, so that "
        "requests do not arrive in lock-step waves (set it near one E2E, with warmup ≥ the "
        "concurrency, to measure a steady state).",
    )
    processes: int | None = Field(
        default=None, ge=1, le=64,
        description="Load-generator processes for a URL (empty: one per "
        "64 concurrent streams, at most one per CPU).",
    )
    seed: int = 0
    lag_tick_s: float = Field(0.005, gt=0, description="Event-loop lag probe interval.")


class EndpointRejected(ValueError):
    """The endpoint refuses the benchmark's requests before any level runs."""


def redact_url(url: str) -> str:
    """The URL without credentials, query or fragment: safe to print and store."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


@dataclass
class Endpoint:
    """Where requests go: a URL (socket client, may use several processes) or a target."""

    source: str
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    target: Target | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        """The endpoint in an error: its name, else its (redacted) source."""
        return self.name or self.source

    @property
    def client(self) -> str:
        return "socket" if self.url is not None else "target.invoke_stream"

    def transport(self) -> Transport:
        if self.url is not None:
            return UrlTransport(self.url, self.headers)
        return TargetTransport(self.target, self.name)


# --- requests ------------------------------------------------------------------------------


def make_req(prompt: Prompt, cfg: LoadConfig, fixed: str | None, warmup: bool = False) -> Req:
    body = payload(cfg.api, text=prompt.text, messages=prompt.message_dicts(),
                   max_new_tokens=cfg.max_new_tokens, fixed_length=fixed,
                   seed=cfg.seed if cfg.fixed_length else None, model=cfg.model)
    return Req(body, json.dumps(body).encode(), warmup)


def example_payload(cfg: LoadConfig) -> dict:
    """The benchmark's first request as planned (before the probe picks the fixed-length
    parameter the endpoint accepts): what a dry run lists."""
    fixed = FIXED_LENGTH[cfg.api][0] if cfg.fixed_length else None
    prompt = synthetic_prompts(1, cfg.input_tokens, chat=cfg.api in CHAT_APIS, seed=cfg.seed)[0]
    return make_req(prompt, cfg, fixed).payload


def planned_requests(cfg: LoadConfig) -> int:
    """Requests one endpoint's benchmark sends: the probe, then every level of every repeat
    (open-loop levels at most: duration_s may cut them)."""
    levels = len(cfg.concurrency) + len(cfg.rates)
    return 1 + levels * cfg.repeats * (cfg.warmup + cfg.requests)


def arrivals(n: int, rate_rps: float, seed: int, duration_s: float | None = None) -> list[float]:
    """Poisson arrival offsets (s) from the level's start, cut at duration_s."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(rate_rps)
        if duration_s is not None and t > duration_s:
            break
        out.append(t)
    return out


class _Prompts:
    """Each level's prompts: the replay file from its start, or synthetic ones seeded per level
    and repeat (distinct, so a prefix cache does not shortcut a level)."""

    def __init__(self, cfg: LoadConfig, tokenizer: Any | None):
        self.cfg, self.tokenizer = cfg, tokenizer
        chat = cfg.api in CHAT_APIS
        self.file = (for_api(load_prompts_file(cfg.prompts_file, tokenizer), chat, tokenizer)
                     if cfg.prompts_file else None)

    def get(self, n: int, seed: int) -> list[Prompt]:
        if self.file is not None:
            return [self.file[i % len(self.file)] for i in range(n)]
        return synthetic_prompts(n, self.cfg.input_tokens, self.tokenizer,
                                 chat=self.cfg.api in CHAT_APIS, seed=seed)

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None


# --- running -----------------------------------------------------------------------------------


def _run_sync(coro: Any) -> Any:
    """asyncio.run, also from a thread that already runs an event loop (an async flow or a
    notebook): then the level gets its own thread and loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-loop") as pool:
        return pool.submit(asyncio.run, coro).result()


def _send_one(ep: Endpoint, req: Req, timeout_s: float) -> RawResponse:
    plan = LevelPlan(reqs=[req], concurrency=1, timeout_s=timeout_s)
    raws, _, _ = _run_sync(run_plan(ep.transport(), plan))
    return raws[0]


def probe(ep: Endpoint, cfg: LoadConfig, prompt: Prompt, tokenizer: Any | None
          ) -> tuple[str | None, list[str]]:
    """Find the fixed-length parameter the endpoint accepts: send one request with each in
    turn (bench.apis.FIXED_LENGTH), then none. Returns (parameter or None, notes). Raises
    EndpointRejected when the endpoint answers every form with a client error (4xx): then no
    level could succeed, and the server's message says why (too long a prompt, say)."""
    variants: list[str | None] = [*FIXED_LENGTH[cfg.api], None] if cfg.fixed_length else [None]
    notes: list[str] = []
    rejected: list[str] = []
    for v in variants:
        for _attempt in range(PROBE_ATTEMPTS):  # one flaky answer is not a verdict
            raw = _send_one(ep, make_req(prompt, cfg, v), cfg.timeout_s)
            if silent(raw):  # nothing within the timeout: every level would wait it out
                raise NotAnswering(ep.label, "the benchmark's first request",
                                   _deadline(cfg))
            if not (raw.status is not None and 400 <= raw.status < 500):
                break
        if raw.status is not None and 400 <= raw.status < 500:
            rejected.append(f"{v or 'no fixed-length parameter'}: "
                            f"{to_record(raw, cfg.api, tokenizer).error}")
            continue
        if rejected and v is not None:
            notes.append(f"fixed length through {v} (the endpoint refused "
                         f"{', '.join(r.split(':')[0] for r in rejected)})")
        if cfg.fixed_length and v is None and rejected:
            notes.append("the endpoint accepts no fixed-length parameter "
                         f"({', '.join(FIXED_LENGTH[cfg.api])}): outputs end at EOS and "
                         "output lengths vary")
        return v, notes
    raise EndpointRejected("the endpoint rejected the benchmark's first request: "
                           + rejected[-1].split(": ", 1)[1])


def _deadline(cfg: LoadConfig) -> str:
    return f"the per-request timeout of {cfg.timeout_s:g} s (benchmark.timeout_s)"


def run_benchmark(
    ep: Endpoint, cfg: LoadConfig, *, tokenizer: Any | None = None,
    tokenizer_source: str | None = None, gates: Sequence[GateSpec] | None = None,
    on_progress: ProgressFn | None = None,
) -> BenchResult:
    """Probe, then every level `repeats` times (levels interleaved, so slow drifts of the
    machine spread over all of them), then metrics. Blocking."""
    return run_interleaved([ep], cfg, tokenizer=tokenizer, tokenizer_source=tokenizer_source,
                           gates=gates, on_progress=on_progress)[0]


def run_interleaved(
    eps: Sequence[Endpoint], cfg: LoadConfig, *, tokenizer: Any | None = None,
    tokenizer_source: str | None = None, gates: Sequence[GateSpec] | None = None,
    on_progress: ProgressFn | None = None,
) -> list[BenchResult]:
    """run_benchmark for several endpoints at once: each level of each repeat runs on every
    endpoint in turn, with the same prompts, the order alternating between repeats (ABBA). A
    shared machine's load then falls on all of them alike, and repeat r of one endpoint is
    paired in time with repeat r of the others (the regression gate uses that)."""
    prompts = _Prompts(cfg, tokenizer)
    total = cfg.warmup + cfg.requests
    probes = [probe(ep, cfg, prompts.get(1, cfg.seed - 1)[0], tokenizer) for ep in eps]
    specs: list[tuple[int, float | None]] = [(c, None) for c in cfg.concurrency]
    specs += [(cfg.max_concurrency, r) for r in cfg.rates]
    records: list[list[list[RequestRecord]]] = [[[] for _ in specs] for _ in eps]
    cap_waits = [[0] * len(specs) for _ in eps]
    stats: list[list[Any]] = [[None] * len(specs) for _ in eps]
    for rep in range(cfg.repeats):
        for idx, (conc, rate) in enumerate(specs):
            level_prompts = prompts.get(total, cfg.seed + 1000 * idx + rep)
            times = arrivals(total, rate, cfg.seed + idx, cfg.duration_s) if rate else None
            n = len(times) if times is not None else total  # duration_s may cut arrivals
            order = range(len(eps)) if rep % 2 == 0 else reversed(range(len(eps)))
            for e in order:
                reqs = [make_req(p, cfg, probes[e][0], warmup=i < cfg.warmup)
                        for i, p in enumerate(level_prompts[:n])]
                plan = LevelPlan(reqs=reqs, concurrency=conc, timeout_s=cfg.timeout_s,
                                 arrivals=times, ramp_up_s=0.0 if rate else cfg.ramp_up_s,
                                 lag_tick_s=cfg.lag_tick_s,
                                 silent_limit=max(1, min(conc, len(reqs))))
                label = conc if rate is None else idx
                raws, st, waits = _run_level(eps[e], cfg, plan, label, on_progress)
                if stopped_answering(raws):
                    raise NotAnswering(eps[e].label, f"{plan.silent_limit} benchmark "
                                       "request(s) in a row", _deadline(cfg))
                cap_waits[e][idx] += waits
                worst = stats[e][idx]
                if worst is None or (st.loop_lag_p99_ms or 0) > (worst.loop_lag_p99_ms or 0):
                    stats[e][idx] = st
                records[e][idx] += [
                    to_record(raw, cfg.api, tokenizer, warmup=req.warmup, repeat=rep,
                              prompt_tokens=p.input_tokens)
                    for raw, req, p in zip(raws, reqs, level_prompts, strict=False)
                ]
    mode: Literal["closed", "open", "mixed"] = (
        "mixed" if cfg.concurrency and cfg.rates else "open" if cfg.rates else "closed")
    results = []
    for e, ep in enumerate(eps):
        levels = [compute_level(
            records[e][idx], conc, rate_rps=rate, gates=gates, usd_per_hour=cfg.usd_per_hour,
            instances=cfg.instances, generator=stats[e][idx],
            saturated_reason=saturation_reason(stats[e][idx]),
            expected_output_tokens=cfg.max_new_tokens if cfg.fixed_length else None,
            cap_waits=cap_waits[e][idx],
        ) for idx, (conc, rate) in enumerate(specs)]
        settings = BenchSettings(
            source=ep.source, client=ep.client, mode=mode, requests=cfg.requests,
            warmup=cfg.warmup, ramp_up_s=cfg.ramp_up_s, max_new_tokens=cfg.max_new_tokens,
            input_tokens=cfg.input_tokens, prompt_tokens_exact=prompts.exact, api=cfg.api,
            prompts_file=cfg.prompts_file, tokenizer=tokenizer_source,
            fixed_length=probes[e][0], seed=cfg.seed if cfg.fixed_length else None,
            repeats=cfg.repeats, timeout_s=cfg.timeout_s, usd_per_hour=cfg.usd_per_hour,
            instances=cfg.instances,
            interleaved_with=[o.source for o in eps if o is not ep],
        )
        results.append(BenchResult(levels=levels, settings=settings,
                                   saturation_rps=saturation_rate(levels), notes=probes[e][1]))
    return results


def _run_level(ep: Endpoint, cfg: LoadConfig, plan: LevelPlan, label: int,
               on_progress: ProgressFn | None) -> tuple[list[RawResponse], Any, int]:
    total = len(plan.reqs)
    if on_progress is not None:
        on_progress(label, 0, total)
    processes = 1
    if ep.url is not None:  # an open loop's cap may far exceed what is ever in flight
        processes = cfg.processes or auto_processes(min(plan.concurrency, total))
    if processes > 1:
        out = run_in_processes(ep.url, ep.headers, plan, processes)  # type: ignore[arg-type]
        if on_progress is not None:
            on_progress(label, total, total)
        return out

    def done(n: int) -> None:
        if on_progress is not None:
            on_progress(label, n, total)

    return _run_sync(run_plan(ep.transport(), plan, on_done=done))


def bench_url(
    url: str, cfg: LoadConfig, *, tokenizer: Any | None = None,
    tokenizer_source: str | None = None, gates: Sequence[GateSpec] | None = None,
    on_progress: ProgressFn | None = None, headers: dict[str, str] | None = None,
) -> BenchResult:
    """Benchmark a URL: LMI's /invocations, or an OpenAI-compatible /v1/chat/completions or
    /v1/completions (cfg.api). Blocking."""
    ep = Endpoint(source=redact_url(url), url=url, headers=dict(headers or {}))
    return run_benchmark(ep, cfg, tokenizer=tokenizer, tokenizer_source=tokenizer_source,
                         gates=gates, on_progress=on_progress)


def bench_endpoint(
    target: Target, endpoint: str, cfg: LoadConfig, *, tokenizer: Any | None = None,
    tokenizer_source: str | None = None, gates: Sequence[GateSpec] | None = None,
    on_progress: ProgressFn | None = None, find_tokenizer: bool = True,
    production: str | None = None, load_tokenizer: bool = True,
) -> BenchResult:
    """Benchmark a named endpoint of a Target, through its invoke_stream (the target owns
    every way to reach an endpoint: its faults, retries and routing stay in the measurement).
    Without a tokenizer (and find_tokenizer) the endpoint's own model's is found
    (bench.endpoint_model).
    production: another endpoint to measure in the same run, interleaved level by level
    (run_interleaved); its result is the returned one's `production`. Blocking."""
    notes: list[str] = []
    if tokenizer is None and find_tokenizer:
        from lmiflow.bench.endpoint_model import endpoint_model

        info = endpoint_model(target, endpoint, load=load_tokenizer)
        tokenizer, tokenizer_source, notes = info.tokenizer, info.tokenizer_source, info.notes

    eps = [Endpoint(source=f"{target.kind}:{name}", target=target, name=name)
           for name in [endpoint, *([production] if production else [])]]
    results = run_interleaved(eps, cfg, tokenizer=tokenizer, tokenizer_source=tokenizer_source,
                              gates=gates, on_progress=on_progress)
    result = results[0]
    result.notes = notes + result.notes
    if production:
        result.production = results[1]
    return result
