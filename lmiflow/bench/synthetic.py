"""A synthetic streaming LMI endpoint with known latencies, for tests and the fidelity check.

Answers `POST /invocations` (any path) like the LMI container: with `"stream": true`, one
`{"token": {...}}` JSON line per token, the last line adding `generated_text` and `details`.
Token i (0-based) is sent at request arrival + ttft + i × tpot, scheduled against absolute
deadlines so the server's own jitter does not accumulate. Optional failures: a 424 answer
before streaming, or a last line with `finish_reason: "error"` in mid-stream.

Hand-written on asyncio streams rather than a web framework on purpose: it is the ruler the
load generator is checked against, and a framework's per-chunk cost at thousands of chunks
per second would be part of what is measured. Run it in its own process
(`python -m lmiflow.bench.synthetic`, or `serve_in_subprocess`) so it never shares the generator's
event loop. Binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class SyntheticConfig:
    ttft_s: float = 0.05
    tpot_s: float = 0.01
    fail_rate: float = 0.0
    # Add this to details.generated_tokens (LMI's vLLM service has reported count + 1).
    details_token_offset: int = 0
    seed: int = 0


class SyntheticServer:
    def __init__(self, cfg: SyntheticConfig):
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # HTTP/1.1 keep-alive: serve requests until the client closes
                head = await reader.readuntil(b"\r\n\r\n")
                arrival = time.perf_counter()
                lines = head.decode("latin-1").split("\r\n")
                method, _path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if method == "GET":
                    await self._send(writer, 200, b'{"status": "Healthy"}')
                    continue
                self.requests += 1
                await self._invoke(writer, body, arrival)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        await writer.drain()

    async def _invoke(self, writer: asyncio.StreamWriter, body: bytes, arrival: float) -> None:
        try:
            payload = json.loads(body)
            n = int(payload.get("parameters", {}).get("max_new_tokens", 16))
            stream = bool(payload.get("stream", False))
        except (ValueError, AttributeError, TypeError):
            await self._send(writer, 400, b'{"code": 400, "message": "bad request"}')
            return
        cfg = self.cfg
        fail = cfg.fail_rate > 0 and self.rng.random() < cfg.fail_rate
        fail_midstream = fail and self.rng.random() < 0.5
        if fail and not fail_midstream:
            await asyncio.sleep(cfg.ttft_s)
            await self._send(writer, 424, b'{"code": 424, "message": "synthetic failure"}')
            return
        loop = asyncio.get_running_loop()
        offset = loop.time() - time.perf_counter()  # deadlines on the loop's clock

        async def until(t_perf: float) -> None:
            delay = t_perf + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

        if not stream:
            await until(arrival + cfg.ttft_s + (n - 1) * cfg.tpot_s)
            out = {"generated_text": " tok" * n,
                   "details": {"finish_reason": "length", "generated_tokens": n}}
            await self._send(writer, 200, json.dumps(out).encode())
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/jsonlines\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        stop_at = self.rng.randrange(1, n + 1) if fail_midstream else None
        for i in range(n):
            await until(arrival + cfg.ttft_s + i * cfg.tpot_s)
            line: dict = {"token": {"id": i + 1, "text": " tok", "log_prob": -0.5}}
            if stop_at is not None and i + 1 == stop_at:
                line["generated_text"] = None
                line["details"] = {"finish_reason": "error", "generated_tokens": i + 1}
            elif i == n - 1:
                line["generated_text"] = " tok" * n
                line["details"] = {"finish_reason": "length",
                                   "generated_tokens": n + cfg.details_token_offset}
            data = json.dumps(line).encode() + b"\n"
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            if stop_at is not None and i + 1 == stop_at:
                break
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _main(cfg: SyntheticConfig, port: int) -> None:
    server = SyntheticServer(cfg)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", port, backlog=4096)
    actual = srv.sockets[0].getsockname()[1]
    print(f"READY {actual}", flush=True)
    async with srv:
        await srv.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ttft-ms", type=float, default=50)
    p.add_argument("--tpot-ms", type=float, default=10)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--details-token-offset", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cfg = SyntheticConfig(a.ttft_ms / 1000, a.tpot_ms / 1000, a.fail_rate,
                          a.details_token_offset, a.seed)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(cfg, a.port))


@contextlib.contextmanager
def serve_in_subprocess(
    ttft_ms: float = 50, tpot_ms: float = 10, fail_rate: float = 0.0,
    details_token_offset: int = 0, seed: int = 0, startup_timeout_s: float = 30,
) -> Iterator[str]:
    """Start the server in its own process; yields its /invocations URL; stops it after."""
    cmd = [sys.executable, "-m", "lmiflow.bench.synthetic", "--ttft-ms", str(ttft_ms),
           "--tpot-ms", str(tpot_ms), "--fail-rate", str(fail_rate),
           "--details-token-offset", str(details_token_offset), "--seed", str(seed)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + startup_timeout_s
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("READY") or proc.poll() is not None:
                break
        if not line.startswith("READY"):
            raise RuntimeError(f"synthetic server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/invocations"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
