"""How a request reaches the endpoint: a URL over the socket client (bench.http), or a
Target's invoke_stream (boto3 for SageMaker) in a thread per request."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Protocol

from lmiflow.bench.http import HttpClient, RawResponse


@dataclass(frozen=True)
class Req:
    """One request, serialized before the level starts so no JSON is built on the clock."""

    payload: dict
    body: bytes
    warmup: bool = False


class Transport(Protocol):
    async def open(self, n: int) -> None:
        """Get ready for n concurrent requests (connections, threads)."""

    async def send(self, req: Req, raw: RawResponse, timeout_s: float) -> None:
        """Fill raw as the answer streams in; a failed request sets raw.error, never raises."""

    async def aclose(self) -> None: ...


class UrlTransport:
    def __init__(self, url: str, headers: dict[str, str] | None = None):
        self.client = HttpClient(url, headers)

    async def open(self, n: int) -> None:
        await self.client.open(n)

    async def send(self, req: Req, raw: RawResponse, timeout_s: float) -> None:
        await self.client.post(req.body, raw, timeout_s)

    async def aclose(self) -> None:
        await self.client.aclose()


def _status_of(exc: Exception) -> int | None:
    """The HTTP status an invocation failed with: the local target's InvocationError carries
    it; botocore's errors carry the container's (ModelError's OriginalStatusCode) or the
    service's. The probe needs it to tell a refused parameter (4xx) from a failure."""
    status = getattr(exc, "status_code", None)
    resp = getattr(exc, "response", None)
    if status is None and isinstance(resp, dict):
        status = resp.get("OriginalStatusCode") or resp.get("ResponseMetadata", {}).get(
            "HTTPStatusCode")
    return int(status) if isinstance(status, int) else None


class DaemonThreads(Executor):
    """A thread per call, daemonic. ThreadPoolExecutor's threads are joined when the
    interpreter exits, so a request still waiting on an endpoint that answers nothing kept
    an interrupted run's process alive for the rest of its timeout (minutes) after its
    cleanup; a daemon thread does not. The callers bound how many run at once (a level's
    workers, or its cap on requests in flight)."""

    def __init__(self, name: str):
        self.name = name
        self.closed = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        if self.closed:
            raise RuntimeError("cannot submit after shutdown")
        fut: Future = Future()

        def run() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the caller, as an executor does
                fut.set_exception(exc)

        threading.Thread(target=run, name=self.name, daemon=True).start()
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.closed = True  # running threads end with their request's deadline


class TargetTransport:
    """A named endpoint of a Target: its blocking invoke_stream runs in a thread per request,
    which timestamps each line itself (the event loop's delay never enters a timestamp)."""

    def __init__(self, target: Any, endpoint: str):
        self.target = target
        self.endpoint = endpoint
        self.pool: DaemonThreads | None = None
        self.cancelled = threading.Event()

    async def open(self, n: int) -> None:
        self.target.reserve_invocations(n)
        self.pool = DaemonThreads("bench")

    def _blocking(self, payload: dict, deadline: float) -> RawResponse:
        perf = time.perf_counter
        raw = RawResponse(start=perf())
        try:
            stream = self.target.invoke_stream(self.endpoint, payload,
                                               timeout_s=max(0.001, deadline - perf()))
            try:
                for line in stream:
                    raw.chunks.append((perf(), bytes(line) + b"\n"))
                    if self.cancelled.is_set() or perf() > deadline:
                        break
            finally:
                close = getattr(stream, "close", None)  # generators and botocore streams
                if close is not None:
                    with contextlib.suppress(Exception):
                        close()
            raw.status = 200
        except Exception as exc:  # the endpoint's failure is the request's, not the run's
            raw.timed_out = isinstance(exc, TimeoutError)  # Target.invoke_stream's deadline
            raw.status = _status_of(exc)
            raw.error = f"{type(exc).__name__}: {exc}"[:300]
        raw.end = raw.chunks[-1][0] if raw.chunks else perf()
        return raw

    async def send(self, req: Req, raw: RawResponse, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        raw.start = time.perf_counter()
        fut = loop.run_in_executor(self.pool, self._blocking, req.payload,
                                   raw.start + timeout_s)
        try:
            done = await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            # The thread cannot be interrupted: it stops at its next line (deadline), and what
            # it gathered is dropped.
            raw.timed_out = True
            raw.error = f"timeout after {timeout_s:g} s"
            raw.end = time.perf_counter()
            return
        raw.start, raw.status, raw.chunks, raw.end, raw.error, raw.timed_out = (
            done.start, done.status, done.chunks, done.end, done.error, done.timed_out)

    async def aclose(self) -> None:
        self.cancelled.set()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
