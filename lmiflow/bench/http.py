"""A streaming HTTP/1.1 client that takes the clock at the socket.

Why not aiohttp or httpx: both hand each chunk to a task through a queue, so a chunk's
timestamp is taken one or more event-loop turns after its bytes arrived, and under bursts of
concurrent streams those turns are where the client's own time enters TTFT (perf/
bench_fidelity.py measured lmiflow +11 % TTFT at concurrency 48 with aiohttp against +3 % for
a raw-socket client on the same endpoint). Here an asyncio.Protocol reads the clock first
thing in `data_received`, the callback the event loop runs when the socket is readable, and
stores the bytes with it; HTTP framing is h11's (the parser httpx uses), run after the
timestamp, and the body (JSON lines, SSE) is parsed only after the request has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

perf = time.perf_counter


@dataclass
class RawResponse:
    """One request as it came off the socket: every body chunk with its arrival time
    (perf_counter seconds, the moment `data_received` ran)."""

    start: float = 0.0
    status: int | None = None
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    end: float | None = None
    error: str | None = None
    timed_out: bool = False


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT)
        self.transport: asyncio.Transport | None = None
        self.resp: RawResponse | None = None
        self.done: asyncio.Future | None = None
        self.broken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        t = perf()  # first: nothing between the bytes and their timestamp
        resp = self.resp
        if resp is None:  # bytes nobody asked for: this connection cannot be trusted
            self.broken = True
            return
        try:
            self.h11.receive_data(data)
            while True:
                ev = self.h11.next_event()
                if ev is h11.NEED_DATA:
                    return
                if isinstance(ev, h11.Data):
                    resp.chunks.append((t, bytes(ev.data)))
                elif isinstance(ev, h11.Response):
                    resp.status = ev.status_code
                elif isinstance(ev, h11.EndOfMessage):
                    resp.end = t
                    self._finish(None)
                    return
                elif isinstance(ev, h11.ConnectionClosed):
                    self._finish("the server closed the connection mid-response")
                    return
        except h11.RemoteProtocolError as exc:
            self._finish(f"bad HTTP from the server: {exc}")

    def eof_received(self) -> bool | None:
        with contextlib.suppress(h11.RemoteProtocolError):
            self.h11.receive_data(b"")
        if self.resp is not None and self.resp.end is None:
            # A body without length or chunking ends with the connection (h11 says so).
            try:
                while (ev := self.h11.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
                    if isinstance(ev, h11.EndOfMessage):
                        self.resp.end = perf()
                        self._finish(None)
                        break
                    if isinstance(ev, h11.ConnectionClosed):
                        break
            except h11.RemoteProtocolError:
                pass
        self.broken = True
        self._finish("the server closed the connection mid-response")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        self._finish(f"connection lost: {exc}" if exc else
                     "the server closed the connection mid-response")

    def _finish(self, error: str | None) -> None:
        if self.done is not None and not self.done.done():
            if error is not None and self.resp is not None:
                self.resp.error = error
            self.done.set_result(None)

    def reusable(self) -> bool:
        if self.broken or self.transport is None or self.transport.is_closing():
            return False
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class HttpClient:
    """POSTs JSON bodies to one URL over a pool of keep-alive connections (http or https)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None,
                 connect_timeout_s: float = 30.0):
        p = urlsplit(url)
        if p.scheme not in ("http", "https") or not p.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = p.hostname
        self.port = p.port or (443 if p.scheme == "https" else 80)
        self.path = (p.path or "/") + (f"?{p.query}" if p.query else "")
        self.ssl = ssl.create_default_context() if p.scheme == "https" else None
        host_header = p.hostname if p.port is None else f"{p.hostname}:{p.port}"
        self.headers = [("Host", host_header), ("Content-Type", "application/json"),
                        ("Accept", "application/jsonlines, text/event-stream"),
                        ("User-Agent", "lmiflow-bench"),
                        *((k, v) for k, v in (headers or {}).items())]
        self.connect_timeout_s = connect_timeout_s
        self.idle: list[_Conn] = []
        self.all: set[_Conn] = set()

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(_Conn, self.host, self.port, ssl=self.ssl,
                                   server_hostname=self.host if self.ssl else None),
            self.connect_timeout_s,
        )
        self.all.add(conn)
        return conn

    async def open(self, n: int) -> None:
        """Connect n connections up front, so no measured request pays for a handshake."""
        conns = await asyncio.gather(*(self._connect() for _ in range(n)),
                                     return_exceptions=True)
        self.idle.extend(c for c in conns if isinstance(c, _Conn))

    async def post(self, body: bytes, resp: RawResponse, timeout_s: float) -> None:
        """Send body and fill resp as the answer streams in; never raises for a failed
        request (resp.error says what happened)."""
        conn = self.idle.pop() if self.idle else None
        try:
            if conn is None:
                conn = await self._connect()
            loop = asyncio.get_running_loop()
            conn.resp, conn.done = resp, loop.create_future()
            data = conn.h11.send(h11.Request(
                method="POST", target=self.path,
                headers=[*self.headers, ("Content-Length", str(len(body)))]))
            data += conn.h11.send(h11.Data(data=body)) + conn.h11.send(h11.EndOfMessage())
            assert conn.transport is not None
            resp.start = perf()
            conn.transport.write(data)
            await asyncio.wait_for(conn.done, timeout_s)
        except asyncio.TimeoutError:
            resp.timed_out = True
            resp.error = f"timeout after {timeout_s:g} s"
        except (OSError, h11.LocalProtocolError) as exc:
            resp.error = f"{type(exc).__name__}: {exc}"
        finally:
            if resp.start == 0.0:
                resp.start = perf()
            if resp.end is None:
                resp.end = perf()
            if conn is not None:
                conn.resp = conn.done = None
                if resp.error is None and conn.reusable():
                    self.idle.append(conn)
                else:
                    conn.close()
                    self.all.discard(conn)

    async def aclose(self) -> None:
        for conn in self.all:
            conn.close()
        self.all.clear()
        self.idle.clear()
