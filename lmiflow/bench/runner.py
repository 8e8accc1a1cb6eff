"""Running one level: closed loop (N workers, each sends its next request when the last one
ends) or open loop (arrivals at scheduled times), in this process or spread over several.

One Python event loop tops out at a few thousand streamed lines per second; past that its
own lag enters every timestamp. A URL level can therefore run in several processes, each
with its share of the workers (or arrivals), all starting at one agreed instant; Linux's
perf_counter is CLOCK_MONOTONIC, one clock for every process, so their records merge as is.
Each process watches its own event-loop lag and CPU; the level keeps the worst.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lmiflow.bench.http import RawResponse
from lmiflow.bench.metrics import GeneratorStats
from lmiflow.bench.transports import Req, Transport, UrlTransport

# Streams one generator process takes before `processes: auto` adds another (perf/
# bench_fidelity.py measures what one process sustains).
STREAMS_PER_PROCESS = 64


class Health:
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


def merge_stats(stats: Sequence[GeneratorStats]) -> GeneratorStats:
    def worst(name: str) -> float | None:
        vals = [v for s in stats if (v := getattr(s, name)) is not None]
        return max(vals) if vals else None

    return GeneratorStats(
        loop_lag_p50_ms=worst("loop_lag_p50_ms"), loop_lag_p99_ms=worst("loop_lag_p99_ms"),
        loop_lag_max_ms=worst("loop_lag_max_ms"), cpu_pct=worst("cpu_pct"),
        processes=len(stats),
    )


@dataclass
class LevelPlan:
    """What one process runs of a level. arrivals (open loop): seconds after the level's
    start at which each request is sent; None for a closed loop of `concurrency` workers,
    worker k starting at ramp_up_s × k / concurrency."""

    reqs: list[Req]
    concurrency: int
    timeout_s: float
    arrivals: list[float] | None = None
    ramp_up_s: float = 0.0
    lag_tick_s: float = 0.005
    silent_limit: int | None = None  # stop after this many timeouts in a row without a byte


NOT_SENT = "not sent: the endpoint stopped answering"


def silent(raw: RawResponse) -> bool:
    """A request that timed out before the endpoint sent a single byte."""
    return raw.timed_out and not raw.chunks


def stopped_answering(raws: Sequence[RawResponse]) -> bool:
    """The level stopped early because the endpoint went silent (LevelPlan.silent_limit)."""
    return any(r.error == NOT_SENT for r in raws)


async def run_plan(
    transport: Transport, plan: LevelPlan, *, start_at: float | None = None,
    on_done: Callable[[int], None] | None = None,
) -> tuple[list[RawResponse], GeneratorStats, int]:
    """Run a plan: (one RawResponse per request in plan order, generator stats, cap waits:
    open-loop arrivals that found every in-flight slot busy)."""
    raws = [RawResponse() for _ in plan.reqs]
    health = Health(plan.lag_tick_s)
    finished = 0
    cap_waits = 0
    silent_run = 0  # timeouts in a row without a byte: past silent_limit, send no more

    async def one(i: int) -> None:
        nonlocal finished, silent_run
        if plan.silent_limit is not None and silent_run >= plan.silent_limit:
            # Every worker's last request timed out with nothing: the rest of the level
            # would wait out one timeout each, for nothing. Marked, not sent.
            raws[i].error = NOT_SENT
        else:
            await transport.send(plan.reqs[i], raws[i], plan.timeout_s)
            silent_run = silent_run + 1 if silent(raws[i]) else 0
        finished += 1
        if on_done is not None:
            on_done(finished)

    await transport.open(min(plan.concurrency, len(plan.reqs)))
    try:
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        health.start()
        t0 = time.perf_counter()
        if plan.arrivals is None:
            next_i = 0

            async def worker(k: int) -> None:
                nonlocal next_i
                if plan.ramp_up_s > 0:
                    await asyncio.sleep(plan.ramp_up_s * k / plan.concurrency)
                while next_i < len(plan.reqs):
                    i = next_i
                    next_i += 1
                    await one(i)

            await asyncio.gather(*(worker(k) for k in range(min(plan.concurrency,
                                                                len(plan.reqs)))))
        else:
            sem = asyncio.Semaphore(plan.concurrency)

            async def fire(i: int) -> None:
                nonlocal cap_waits
                if sem.locked():
                    cap_waits += 1
                async with sem:
                    await one(i)

            tasks = []
            for i, at in enumerate(plan.arrivals):
                delay = t0 + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(fire(i)))
            await asyncio.gather(*tasks)
    finally:
        stats = await health.stop()
        await transport.aclose()
    return raws, stats, cap_waits


def auto_processes(concurrency: int, cpus: int | None = None) -> int:
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(cpus, math.ceil(concurrency / STREAMS_PER_PROCESS)))


def split(plan: LevelPlan, parts: int) -> list[tuple[list[int], LevelPlan]]:
    """Deal a plan's requests (and workers) round-robin into `parts` plans; each comes with
    the indices of its requests in the original plan."""
    out = []
    for p in range(parts):
        idx = list(range(p, len(plan.reqs), parts))
        if not idx:
            continue
        conc = len(range(p, plan.concurrency, parts)) or 1
        out.append((idx, LevelPlan(
            reqs=[plan.reqs[i] for i in idx], concurrency=conc, timeout_s=plan.timeout_s,
            arrivals=None if plan.arrivals is None else [plan.arrivals[i] for i in idx],
            ramp_up_s=plan.ramp_up_s,  # each part spreads its workers over the whole ramp-up
            lag_tick_s=plan.lag_tick_s, silent_limit=None if plan.silent_limit is None
            else conc,
        )))
    return out


def _child(url: str, headers: dict[str, str], plan: LevelPlan, conn: object) -> None:
    """A generator process: connect, say ready, wait for the start instant, run, report."""

    async def main() -> tuple:
        transport = UrlTransport(url, headers)
        loop = asyncio.get_running_loop()
        await transport.open(min(plan.concurrency, len(plan.reqs)))
        conn.send("ready")  # type: ignore[attr-defined]
        start_at = await loop.run_in_executor(None, conn.recv)  # type: ignore[attr-defined]
        return await run_plan(transport, plan, start_at=start_at)

    try:
        conn.send(("ok", asyncio.run(main())))  # type: ignore[attr-defined]
    except BaseException as exc:  # reported to the parent, which fails the level's requests
        conn.send(("error", f"{type(exc).__name__}: {exc}"))  # type: ignore[attr-defined]


def _recv(pipe: object) -> object:
    try:
        return pipe.recv()  # type: ignore[attr-defined]
    except EOFError:
        raise RuntimeError("a load-generator process died (see its traceback above)") from None


def run_in_processes(
    url: str, headers: dict[str, str], plan: LevelPlan, processes: int,
    startup_timeout_s: float = 120.0,
) -> tuple[list[RawResponse], GeneratorStats, int]:
    """run_plan over `processes` spawned processes that start together. Blocking."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent (Prefect)
    parts = split(plan, processes)
    procs, pipes = [], []
    try:
        for _idx, part in parts:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_child, args=(url, headers, part, theirs), daemon=True)
            proc.start()
            procs.append(proc)
            pipes.append(mine)
        for pipe in pipes:
            if not pipe.poll(startup_timeout_s):
                raise RuntimeError("a load-generator process did not start in time")
            msg = _recv(pipe)
            if msg != "ready":
                raise RuntimeError(f"load-generator process failed: {msg[1]}")
        start_at = time.perf_counter() + 0.05
        for pipe in pipes:
            pipe.send(start_at)
        raws: list[RawResponse] = [RawResponse() for _ in plan.reqs]
        stats, cap_waits = [], 0
        for (idx, _part), pipe in zip(parts, pipes, strict=True):
            status, result = _recv(pipe)
            if status != "ok":
                raise RuntimeError(f"load-generator process failed: {result}")
            part_raws, part_stats, part_waits = result
            for i, raw in zip(idx, part_raws, strict=True):
                raws[i] = raw
            stats.append(part_stats)
            cap_waits += part_waits
        return raws, merge_stats(stats), cap_waits
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
