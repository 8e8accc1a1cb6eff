"""Load generator: a concurrency sweep (closed loop) or Poisson arrivals (open loop) against
an LMI-contract URL or a named endpoint of a Target, one RequestRecord per request.

Accuracy first: each streamed line is timestamped with time.perf_counter the moment it is
parsed (in the worker thread for a Target, so the event loop never delays it); prompts are
built before a level starts; and each level watches its own event-loop lag and CPU so a level
where the generator, not the endpoint, set the pace is flagged `generator_saturated`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from pydantic import BaseModel, Field

from lmiflow.bench.gate_spec import GateSpec
from lmiflow.bench.metrics import (
    BenchResult,
    BenchSettings,
    GeneratorStats,
    LevelResult,
    RequestRecord,
    compute_level,
    saturation_reason,
)

if TYPE_CHECKING:
    from lmiflow.targets.base import Target

ProgressFn = Callable[[int, int, int], None]

# Short common English words: nearly all are one token (with their leading space) in BPE and
# SentencePiece vocabularies, so N words approximate N tokens when no tokenizer is given.
_WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their can has more when will "
    "would if so out up no what about into than them only other new some time could these "
    "two may then do first any my now such like our over man me even most made after also "
    "did many before must through back years where much your way well down should because "
    "each just those people how too little state good very make world still own see men "
    "work long get here between both life being under never day same another know while"
).split()


class LoadConfig(BaseModel):
    """One benchmark run: what to send and how hard."""

    concurrency: list[int] = Field(default_factory=lambda: [1], description="Closed-loop levels.")
    rates: list[float] | None = Field(
        default=None, description="Open loop: Poisson arrival rates (req/s), one level each."
    )
    max_concurrency: int = Field(
        256, ge=1, description="Open loop: cap on requests in flight (the level's concurrency)."
    )
    requests: int = Field(16, ge=1, description="Measured requests per level.")
    warmup: int = Field(2, ge=0, description="Requests per level issued first and excluded.")
    max_new_tokens: int = Field(64, ge=1)
    input_tokens: int = Field(128, ge=1)
    timeout_s: float = Field(120.0, gt=0, description="Per request, first byte to last line.")
    ignore_eos: bool = Field(
        False,
        description="Send parameters.ignore_eos_token so every output is max_new_tokens long. "
        "LMI's vLLM service maps it to vLLM's ignore_eos (djl_python/lmi_vllm/"
        "request_response_utils.py); a strict server may reject it, hence off by default.",
    )
    usd_per_hour: float | None = Field(default=None, ge=0)
    instances: int = Field(1, ge=1)
    ramp_up_s: float = Field(
        0.0, ge=0,
        description="Closed loop: start the workers evenly over this many seconds, so that "
        "requests do not arrive in lock-step waves (set it near one E2E, with warmup ≥ the "
        "concurrency, to measure a steady state).",
    )
    seed: int = 0
    lag_tick_s: float = Field(0.005, gt=0, description="Event-loop lag probe interval.")
    http_client: Literal["auto", "aiohttp", "httpx"] = Field(
        "auto", description="URL transport: aiohttp when installed (auto), or httpx."
    )


# --- prompts -----------------------------------------------------------------------------


def build_prompts(
    n: int, input_tokens: int, tokenizer: Any | None = None, seed: int = 0
) -> tuple[list[str], bool]:
    """n distinct prompts of about input_tokens tokens (distinct so that a prefix cache does not
    turn the benchmark into a cache test). With a tokenizer (encode/decode) the length is exact
    up to re-tokenization at the cut; returns (prompts, exact)."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(input_tokens + 8)]
        text = " ".join(words)
        if tokenizer is not None:
            ids = _encode(tokenizer, text)[:input_tokens]
            text = tokenizer.decode(ids)
        else:
            text = " ".join(words[:input_tokens])
        prompts.append(text)
    return prompts, tokenizer is not None


def _encode(tokenizer: Any, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:  # tokenizers without the keyword
        return list(tokenizer.encode(text))


def make_payload(prompt: str, cfg: LoadConfig) -> dict:
    params: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "details": True}
    if cfg.ignore_eos:
        params["ignore_eos_token"] = True
    return {"inputs": prompt, "parameters": params, "stream": True}


# --- parsing the stream ----------------------------------------------------------------------


class _Recorder:
    """Builds a RequestRecord from (timestamp, line) pairs as they arrive."""

    def __init__(self, start: float, warmup: bool):
        self.rec = RequestRecord(start=start, warmup=warmup)
        self.last: float | None = None
        self.closed = False  # set once the record is handed back: a late thread must stop
        self._buf = b""

    def chunk(self, t: float, data: bytes) -> None:
        """Raw transport bytes: whole lines are parsed at t, a partial line waits."""
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            self.line(t, line)

    def end_of_stream(self, t: float) -> None:
        if self._buf.strip():
            self.line(t, self._buf)
        self._buf = b""

    def line(self, t: float, raw: bytes | str) -> None:
        raw = raw.strip()
        if not raw:
            return
        self.last = t
        try:
            obj = json.loads(raw)
        except ValueError:
            self.fail(t, f"unparsable stream line: {raw[:120]!r}")
            return
        if not isinstance(obj, dict):
            self.fail(t, f"unexpected stream line: {raw[:120]!r}")
            return
        rec = self.rec
        token = obj.get("token")
        if isinstance(token, dict):
            rec.token_times.append(t)
            rec.output_tokens += 1
            if rec.first_token is None and token.get("text"):
                rec.first_token = t
        details = obj.get("details")
        if isinstance(details, dict):
            if details.get("generated_tokens") is not None:
                rec.generated_tokens_reported = int(details["generated_tokens"])
            if details.get("finish_reason") == "error":
                self.fail(t, "server: stream ended with finish_reason=error"
                          + (f" ({obj['error']})" if obj.get("error") else ""))
        elif obj.get("error") or (obj.get("code") not in (None, 200) and "token" not in obj):
            msg = obj.get("error") or obj.get("message") or obj
            self.fail(t, f"server error: {str(msg)[:200]}")

    def fail(self, t: float, msg: str) -> None:
        if self.rec.error is None:
            self.rec.error = msg
        self.rec.end = t

    def finish(self, t_fallback: float) -> RequestRecord:
        self.closed = True
        rec = self.rec
        if rec.end is None:
            rec.end = self.last if self.last is not None else t_fallback
        if rec.error is None and rec.first_token is None and rec.token_times:
            rec.first_token = rec.token_times[0]  # only empty-text tokens: the first still counts
        if rec.error is None and rec.output_tokens == 0:
            rec.error = "stream ended without a token"
        return rec


# --- transports ------------------------------------------------------------------------------


class Transport(Protocol):
    """Sends one streaming request; fills the recorder as lines arrive; raises on failure."""

    async def send(self, payload: dict, rec: _Recorder) -> None: ...

    async def aclose(self) -> None: ...


def redact_url(url: str) -> str:
    """The URL without credentials, query or fragment: safe to print and store."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


class HttpxTransport:
    """POST to a URL speaking the LMI contract, streamed with httpx (used without aiohttp).

    One single-connection client per concurrent request, handed out from a queue: httpcore's
    shared pool rescans every connection on each request and response (O(n²) per level),
    which measured ~55 requests/s at 64 connections on 2 cores and inflated p50 TTFT by
    80 % (perf/bench_fidelity.py); private pools keep the cost per request flat."""

    def __init__(self, url: str, concurrency: int, timeout_s: float, headers: dict | None = None):
        import certifi
        import httpx

        self.url = url
        self.clients: asyncio.Queue = asyncio.Queue()
        self.all = []
        # Loading CA certificates costs ~30 ms per client: build one context, https or not.
        verify = ssl.create_default_context(cafile=certifi.where())
        for _ in range(concurrency):
            client = httpx.AsyncClient(
                verify=verify,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0)),
                headers={"Accept": "application/jsonlines", **(headers or {})},
            )
            self.all.append(client)
            self.clients.put_nowait(client)

    async def send(self, payload: dict, rec: _Recorder) -> None:
        client = await self.clients.get()
        try:
            await self._send(client, payload, rec)
        finally:
            self.clients.put_nowait(client)

    async def _send(self, client: Any, payload: dict, rec: _Recorder) -> None:
        perf = time.perf_counter
        rec.rec.start = perf()
        async with client.stream("POST", self.url, json=payload) as resp:
            if resp.status_code != 200:
                body = (await resp.aread())[:300].decode("utf-8", "replace")
                rec.fail(perf(), f"HTTP {resp.status_code}: {body}")
                return
            async for chunk in resp.aiter_bytes():
                rec.chunk(perf(), chunk)
            rec.end_of_stream(perf())

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.all))


class AiohttpTransport:
    """POST to a URL speaking the LMI contract, streamed with aiohttp: the default client.
    Measured here against httpx (perf/bench_fidelity.py, same 2-core machine): ~4x the
    requests/s at 64 connections, and less client time inside each TTFT."""

    def __init__(self, url: str, concurrency: int, timeout_s: float, headers: dict | None = None):
        import aiohttp

        self.url = url
        self.headers = {"Accept": "application/jsonlines", **(headers or {})}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=min(timeout_s, 30.0), sock_read=timeout_s
            ),
        )

    async def send(self, payload: dict, rec: _Recorder) -> None:
        perf = time.perf_counter
        rec.rec.start = perf()
        async with self.session.post(self.url, json=payload, headers=self.headers) as resp:
            if resp.status != 200:
                body = (await resp.read())[:300].decode("utf-8", "replace")
                rec.fail(perf(), f"HTTP {resp.status}: {body}")
                return
            async for chunk in resp.content.iter_any():
                rec.chunk(perf(), chunk)
            rec.end_of_stream(perf())

    async def aclose(self) -> None:
        await self.session.close()


HttpClient = Literal["auto", "aiohttp", "httpx"]


def http_client_name(choice: HttpClient = "auto") -> str:
    """The HTTP client `choice` resolves to: aiohttp when installed (faster), else httpx."""
    if choice != "auto":
        return choice
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return "httpx"
    return "aiohttp"


def http_transport(
    url: str, concurrency: int, timeout_s: float, headers: dict | None = None,
    client: HttpClient = "auto",
) -> Transport:
    cls = AiohttpTransport if http_client_name(client) == "aiohttp" else HttpxTransport
    return cls(url, concurrency, timeout_s, headers)


class TargetTransport:
    """A named endpoint of a Target: its blocking invoke_stream runs in a thread per request,
    which timestamps each line itself (the event loop's delay never enters a timestamp)."""

    def __init__(self, target: Any, endpoint: str, concurrency: int):
        self.target = target
        self.endpoint = endpoint
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench")
        self.cancelled = threading.Event()

    def _blocking(self, payload: dict, rec: _Recorder) -> None:
        perf = time.perf_counter
        rec.rec.start = perf()
        stream = self.target.invoke_stream(self.endpoint, payload)
        try:
            for line in stream:
                rec.line(perf(), line)
                if self.cancelled.is_set() or rec.closed or rec.rec.error is not None:
                    break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    async def send(self, payload: dict, rec: _Recorder) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.pool, self._blocking, payload, rec)

    async def aclose(self) -> None:
        # A timed-out request's thread cannot be interrupted; tell it to stop at its next line.
        self.cancelled.set()
        self.pool.shutdown(wait=False, cancel_futures=True)


# --- generator health ----------------------------------------------------------------------


class _Health:
    """Event-loop lag (a ticker that should wake every tick_s) and process CPU over a level."""

    def __init__(self, tick_s: float):
        self.tick_s = tick_s
        self.lags: list[float] = []
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.tick_s)
            self.lags.append(max(0.0, loop.time() - t0 - self.tick_s))

    def start(self) -> None:
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> GeneratorStats:
        cpu = time.process_time() - self.cpu0
        wall = time.perf_counter() - self.wall0
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        lags = np.asarray(self.lags or [0.0]) * 1000
        return GeneratorStats(
            loop_lag_p50_ms=float(np.percentile(lags, 50)),
            loop_lag_p99_ms=float(np.percentile(lags, 99)),
            loop_lag_max_ms=float(lags.max()),
            cpu_pct=100.0 * cpu / wall if wall > 0 else None,
        )


# --- running a level ---------------------------------------------------------------------


async def _one(
    transport: Transport, payload: dict, warmup: bool, timeout_s: float
) -> RequestRecord:
    rec = _Recorder(time.perf_counter(), warmup)
    try:
        await asyncio.wait_for(transport.send(payload, rec), timeout_s)
    except asyncio.TimeoutError:
        rec.rec.timed_out = True
        rec.fail(time.perf_counter(), f"timeout after {timeout_s:g} s")
    except Exception as exc:  # any transport failure is a failed request, not a failed run
        rec.fail(time.perf_counter(), f"{type(exc).__name__}: {exc}"[:300])
    return rec.finish(time.perf_counter())


async def run_level(
    transport: Transport,
    payloads: Sequence[dict],
    warmup: int,
    concurrency: int,
    timeout_s: float,
    *,
    rate_rps: float | None = None,
    ramp_up_s: float = 0.0,
    seed: int = 0,
    on_done: Callable[[int], None] | None = None,
    counters: dict[str, int] | None = None,
) -> list[RequestRecord]:
    """Closed loop (rate_rps None): `concurrency` workers each send the next payload as soon as
    their previous request ends (worker k starts at ramp_up_s × k / concurrency). Open loop:
    Poisson arrivals at rate_rps, at most `concurrency` in flight (later arrivals wait).
    The first `warmup` payloads are warm-up.
    counters["cap_waits"] counts open-loop arrivals that found the cap full (their wait is not
    in their latency: the client held them)."""
    records: list[RequestRecord] = []
    next_i = 0

    def done(rec: RequestRecord) -> None:
        records.append(rec)
        if on_done is not None:
            on_done(len(records))

    if rate_rps is None:
        async def worker(k: int) -> None:
            nonlocal next_i
            if ramp_up_s > 0:
                await asyncio.sleep(ramp_up_s * k / concurrency)
            while next_i < len(payloads):
                i = next_i
                next_i += 1
                done(await _one(transport, payloads[i], i < warmup, timeout_s))

        await asyncio.gather(*(worker(k) for k in range(min(concurrency, len(payloads)))))
        return records

    rng = random.Random(seed)
    sem = asyncio.Semaphore(concurrency)

    if counters is not None:
        counters.setdefault("cap_waits", 0)

    async def fire(i: int) -> None:
        if sem.locked() and counters is not None:
            counters["cap_waits"] += 1
        async with sem:
            done(await _one(transport, payloads[i], i < warmup, timeout_s))

    loop = asyncio.get_running_loop()
    t = loop.time()
    tasks = []
    for i in range(len(payloads)):
        t += rng.expovariate(rate_rps)
        delay = t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(i)))
    await asyncio.gather(*tasks)
    return records


TransportFactory = Callable[[int], Transport]


async def run_benchmark_async(
    make_transport: TransportFactory,
    cfg: LoadConfig,
    *,
    source: str = "",
    client: str = "",
    tokenizer: Any | None = None,
    gates: Sequence[GateSpec] | None = None,
    on_progress: ProgressFn | None = None,
) -> BenchResult:
    """Run every level in turn (a fresh transport per level, sized to it) and compute metrics.
    on_progress(level, done, total): level is the concurrency (open loop: the level's index)."""
    levels: list[LevelResult] = []
    mode: Literal["closed", "open"] = "open" if cfg.rates else "closed"
    specs: list[tuple[int, float | None]] = (
        [(cfg.max_concurrency, r) for r in cfg.rates] if cfg.rates
        else [(c, None) for c in cfg.concurrency]
    )
    exact = False
    for idx, (conc, rate) in enumerate(specs):
        total = cfg.warmup + cfg.requests
        prompts, exact = build_prompts(total, cfg.input_tokens, tokenizer, seed=cfg.seed + idx)
        payloads = [make_payload(p, cfg) for p in prompts]
        label = conc if rate is None else idx
        transport = make_transport(conc)
        health = _Health(cfg.lag_tick_s)
        progress = None
        if on_progress is not None:
            on_progress(label, 0, total)

            def progress(n: int, label: int = label, total: int = total) -> None:
                on_progress(label, n, total)
        counters: dict[str, int] = {}
        try:
            health.start()
            records = await run_level(
                transport, payloads, cfg.warmup, conc, cfg.timeout_s,
                rate_rps=rate, ramp_up_s=cfg.ramp_up_s, seed=cfg.seed + idx,
                on_done=progress, counters=counters,
            )
        finally:
            stats = await health.stop()
            await transport.aclose()
        reason = saturation_reason(stats)
        if counters.get("cap_waits"):
            cap = f"{counters['cap_waits']} arrivals waited for the in-flight cap {conc}"
            reason = f"{reason}; {cap}" if reason else cap
        levels.append(compute_level(
            records, conc, rate_rps=rate, gates=gates, usd_per_hour=cfg.usd_per_hour,
            instances=cfg.instances, generator=stats, saturated_reason=reason,
        ))
    settings = BenchSettings(
        source=source, client=client, mode=mode, requests=cfg.requests, warmup=cfg.warmup,
        ramp_up_s=cfg.ramp_up_s,
        max_new_tokens=cfg.max_new_tokens, input_tokens=cfg.input_tokens,
        prompt_tokens_exact=exact, ignore_eos=cfg.ignore_eos, timeout_s=cfg.timeout_s,
        usd_per_hour=cfg.usd_per_hour, instances=cfg.instances,
    )
    return BenchResult(levels=levels, settings=settings)


def _run_sync(coro: Any) -> Any:
    """asyncio.run, also from a thread that already runs an event loop (an async flow or a
    notebook): then the benchmark gets its own thread and loop, as it would anyway."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-loop") as pool:
        return pool.submit(asyncio.run, coro).result()


def bench_url(
    url: str, cfg: LoadConfig, *, tokenizer: Any | None = None,
    gates: Sequence[GateSpec] | None = None, on_progress: ProgressFn | None = None,
    headers: dict | None = None,
) -> BenchResult:
    """Benchmark any URL that speaks the LMI contract (its /invocations). Blocking."""
    return _run_sync(run_benchmark_async(
        lambda c: http_transport(url, c, cfg.timeout_s, headers, cfg.http_client), cfg,
        source=redact_url(url), client=http_client_name(cfg.http_client),
        tokenizer=tokenizer, gates=gates, on_progress=on_progress,
    ))


def bench_endpoint(
    target: Target, endpoint: str, cfg: LoadConfig, *, tokenizer: Any | None = None,
    gates: Sequence[GateSpec] | None = None, on_progress: ProgressFn | None = None,
) -> BenchResult:
    """Benchmark a named endpoint of a Target (its invoke_stream). Blocking."""
    return _run_sync(run_benchmark_async(
        lambda c: TargetTransport(target, endpoint, c), cfg,
        source=f"{target.kind}:{endpoint}", client="target.invoke_stream",
        tokenizer=tokenizer, gates=gates, on_progress=on_progress,
    ))
