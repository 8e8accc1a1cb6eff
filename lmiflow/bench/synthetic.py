"""A synthetic streaming endpoint with known latencies, for tests and the fidelity check.

Speaks what lmiflow benchmarks (bench.apis): on /invocations LMI's `inputs` form (one
`{"token": ...}` JSON line per token, the last adding `generated_text` and `details`) and its
`messages` form (`chat.completion.chunk` JSON lines); on /v1/chat/completions and
/v1/completions OpenAI's server-sent events; GET /v1/models names the model and its
max_model_len, like vLLM. Token i (0-based) is ready at request arrival + ttft + i × tpot,
scheduled against absolute deadlines so the server's own jitter does not accumulate; with
tokens_per_line k, a line carries k tokens and leaves when its last one is ready (LMI's vLLM
service merges deltas that way). Optional failures: a 424 answer before streaming, or a last
line with `finish_reason: "error"` in mid-stream; `reject_params` answers 400 to a request
that uses one of them (a server that does not know a parameter).

Hand-written on asyncio streams rather than a web framework on purpose: it is the ruler the
load generator is checked against, and a framework's per-chunk cost at thousands of chunks
per second would be part of what is measured. Run it in its own process
(`python -m lmiflow.bench.synthetic`, or `serve_in_subprocess`) so it never shares the
generator's event loop. Binds 127.0.0.1 only.
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
    # Add this to the reported output count (LMI's vLLM service reports count + 1).
    details_token_offset: int = 0
    seed: int = 0
    tokens_per_line: int = 1
    reject_params: tuple[str, ...] = ()
    max_model_len: int | None = None  # prompt words + max tokens above it: 400


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
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if method == "GET":
                    models = {"object": "list", "data": [
                        {"id": "synthetic", "object": "model",
                         "max_model_len": self.cfg.max_model_len}]}
                    out = models if path.rstrip("/").endswith("/models") else {"status": "Healthy"}
                    await self._send(writer, 200, json.dumps(out).encode())
                    continue
                self.requests += 1
                await self._invoke(writer, path, body, arrival)
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

    def _check(self, payload: dict, form: str) -> tuple[int, bool, int]:
        """(max tokens, stream, prompt words) or ValueError with the client's mistake."""
        params = payload.get("parameters", {}) if form == "inputs" else payload
        if not isinstance(params, dict):
            raise ValueError("parameters must be an object")
        for name in self.cfg.reject_params:
            if name in params:
                raise ValueError(f"{name}: unknown parameter")
        n = int(params.get("max_new_tokens" if form == "inputs" else "max_tokens", 16))
        if form == "inputs":
            words = len(str(payload["inputs"]).split())
        elif form == "completions":
            words = len(str(payload["prompt"]).split())
        else:
            words = sum(len(str(m["content"]).split()) for m in payload["messages"])
        limit = self.cfg.max_model_len
        if limit is not None and words + n > limit:
            raise ValueError(f"input of {words} tokens + {n} new tokens exceeds max_model_len "
                             f"{limit}")
        return n, bool(payload.get("stream", False)), words

    async def _invoke(self, writer: asyncio.StreamWriter, path: str, body: bytes,
                      arrival: float) -> None:
        route = path.split("?")[0].rstrip("/")
        try:
            payload = json.loads(body)
            if route.endswith("/chat/completions"):
                form, sse = "chat", True
            elif route.endswith("/completions"):
                form, sse = "completions", True
            else:
                form, sse = ("chat" if "messages" in payload else "inputs"), False
            n, stream, words = self._check(payload, form)
        except (ValueError, AttributeError, TypeError, KeyError) as exc:
            msg = json.dumps({"code": 400, "error": f"bad request: {exc}"}).encode()
            await self._send(writer, 400, msg)
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

        reported = n + cfg.details_token_offset
        if not stream:
            await until(arrival + cfg.ttft_s + (n - 1) * cfg.tpot_s)
            out = {"generated_text": " tok" * n,
                   "details": {"finish_reason": "length", "generated_tokens": reported}}
            await self._send(writer, 200, json.dumps(out).encode())
            return
        ctype = b"text/event-stream" if sse else b"application/jsonlines"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype +
                     b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        stop_at = self.rng.randrange(1, n + 1) if fail_midstream else None
        k = max(1, cfg.tokens_per_line)
        sent = 0
        while sent < n:
            last = min(n, sent + k)
            await until(arrival + cfg.ttft_s + (last - 1) * cfg.tpot_s)
            failed = stop_at is not None and last >= stop_at
            line = self._line(form, sent, last, n, reported, words, failed)
            data = (b"data: " + line + b"\n\n") if sse else line + b"\n"
            if sse and last == n and not failed:
                data += b"data: [DONE]\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            sent = last
            if failed:
                break
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    @staticmethod
    def _line(form: str, first: int, last: int, n: int, reported: int, words: int,
              failed: bool) -> bytes:
        text = " tok" * (last - first)
        final = last == n
        if form == "inputs":
            line: dict = {"token": {"id": first + 1, "text": text, "log_prob": -0.5}}
            if failed:
                line["generated_text"] = None
                line["details"] = {"finish_reason": "error", "generated_tokens": last}
            elif final:
                line["generated_text"] = " tok" * n
                line["details"] = {"finish_reason": "length", "generated_tokens": reported,
                                   "input_length": words}
            return json.dumps(line).encode()
        finish = "error" if failed else "length" if final else None
        if form == "chat":
            choice: dict = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
            obj = "text_completion"
        out: dict = {"id": "synthetic", "object": obj, "choices": [choice]}
        if final and not failed:
            out["usage"] = {"prompt_tokens": words, "completion_tokens": reported,
                            "total_tokens": words + reported}
        return json.dumps(out).encode()


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
    p.add_argument("--tokens-per-line", type=int, default=1)
    p.add_argument("--reject-param", action="append", default=[])
    p.add_argument("--max-model-len", type=int, default=None)
    a = p.parse_args(argv)
    cfg = SyntheticConfig(a.ttft_ms / 1000, a.tpot_ms / 1000, a.fail_rate,
                          a.details_token_offset, a.seed, a.tokens_per_line,
                          tuple(a.reject_param), a.max_model_len)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(cfg, a.port))


@contextlib.contextmanager
def serve_in_subprocess(
    ttft_ms: float = 50, tpot_ms: float = 10, fail_rate: float = 0.0,
    details_token_offset: int = 0, seed: int = 0, tokens_per_line: int = 1,
    reject_params: tuple[str, ...] = (), max_model_len: int | None = None,
    startup_timeout_s: float = 30,
) -> Iterator[str]:
    """Start the server in its own process; yields its /invocations URL; stops it after."""
    cmd = [sys.executable, "-m", "lmiflow.bench.synthetic", "--ttft-ms", str(ttft_ms),
           "--tpot-ms", str(tpot_ms), "--fail-rate", str(fail_rate),
           "--details-token-offset", str(details_token_offset), "--seed", str(seed),
           "--tokens-per-line", str(tokens_per_line)]
    for name in reject_params:
        cmd += ["--reject-param", name]
    if max_model_len is not None:
        cmd += ["--max-model-len", str(max_model_len)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
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
