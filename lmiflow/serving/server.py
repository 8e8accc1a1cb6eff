"""Local model server: the SageMaker LMI container contract on 127.0.0.1.

`python -m lmiflow.serving.server --model-dir DIR --port P` reads DIR/serving.properties, answers
`GET /ping` (503 while the model loads, 200 once it serves) and `POST /invocations` with LMI's
schemas (inputs/parameters, streaming jsonlines, chat messages). Concurrent requests share
batched forward passes (serving.engine). `GET /debug/stats` reports the forward-pass count.

Logs go to stderr. A start that fails (bad model id, bad option, out of memory) ends with one
line `lmiflow-server FAILED: <reason>` and exit status 1, so a parent reading the log file can
say why (targets.local does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import aclosing, suppress
from pathlib import Path
from typing import Any

from lmiflow.serving.engine import Engine, EngineError, Step
from lmiflow.serving.options import OptionError, ServerOptions, load_options
from lmiflow.serving.schema import (
    BadRequest,
    ChatRequest,
    InvocationRequest,
    chat_sampling,
    lmi_sampling,
    parse_invocation,
)

log = logging.getLogger("lmiflow.server")

FAILED_MARK = "lmiflow-server FAILED: "
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
JSONLINES = "application/jsonlines"
FINISH_STOP = "stop_sequence"


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class ModelLoadError(RuntimeError):
    """The model or tokenizer did not load; the message names the model."""


class ServerState:
    """Loads the engine off the event loop, so /ping can say 503 while it loads."""

    def __init__(self, model_dir: Path, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.model_dir = model_dir
        self.max_body_bytes = max_body_bytes
        self.options: ServerOptions | None = None
        self.engine: Engine | None = None
        self.failure: str | None = None
        self.slots: asyncio.Semaphore | None = None
        self.in_flight = 0
        self.requests_total = 0
        self._chat_ids = 0

    def load(self) -> None:
        opts = load_options(self.model_dir, os.environ)
        self.options = opts
        for key in opts.ignored:
            log.info("serving.properties: %s ignored by the local server", key)
        log.info("loading model %s from %s", opts.model_source, opts.engine.model_path)
        t0 = time.perf_counter()
        try:
            engine = Engine(opts.engine)
        except Exception as exc:
            raise ModelLoadError(f"cannot load model {opts.model_source}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if engine.device == "cpu" and opts.engine.gpu_memory_utilization:
            log.info("serving.properties: option.gpu_memory_utilization ignored on CPU")
        log.info("model loaded in %.1f s", time.perf_counter() - t0)
        self.engine = engine

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.alive()

    def next_chat_id(self) -> str:
        self._chat_ids += 1
        return f"chatcmpl-{self._chat_ids}"


def _error(message: str, status: int, **extra: Any):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message, "code": 424, **extra}, status_code=status)


async def _read_body(request: Any, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("bad Content-Length")
        if int(declared) > limit:
            raise BadRequest(f"request body over {limit} bytes", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"request body over {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


class _Generation:
    """One request's run through the engine: token texts, stop sequences, finish reason."""

    def __init__(self, engine: Engine, input_ids: list[int], max_new_tokens: int,
                 sampling: Any, stops: list[str], stream: bool):
        self.engine = engine
        self.input_ids = input_ids
        self.stops = stops
        self.max_stop = max((len(s) for s in stops), default=0)
        # Token by token only where someone needs it: a streaming client or a stop sequence.
        self.steps = engine.generate(input_ids, max_new_tokens, sampling,
                                     stream=stream or bool(stops))
        self.texts = engine.detokenizer()
        self.text = ""
        self.token_ids: list[int] = []
        self.tokens: list[dict[str, Any]] = []  # LMI details.tokens (non-streaming)
        self.finish_reason: str | None = None

    async def events(self) -> AsyncIterator[tuple[Step, str]]:
        """Use under contextlib.aclosing: closing it cancels the engine request at once."""
        try:
            async for step in self.steps:
                piece = self.texts.step(step.token_id)
                self.token_ids.append(step.token_id)
                self.tokens.append({"id": step.token_id, "text": piece,
                                    "log_prob": step.log_prob})
                before = len(self.text)
                self.text += piece
                reason = step.finish_reason
                if self.stops and piece:
                    start = max(0, before - self.max_stop)
                    hits = [i for s in self.stops if (i := self.text.find(s, start)) >= 0]
                    if hits:
                        self.text = self.text[: min(hits)]
                        reason = FINISH_STOP
                if reason is not None:
                    self.finish_reason = reason
                    if reason != FINISH_STOP:  # authoritative text for the whole sequence
                        self.text = self.engine.decode(self.token_ids)
                    yield step, piece
                    return  # closing the engine iterator cancels the request
                yield step, piece
        finally:
            await self.steps.aclose()


def build_app(state: ServerState):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    class _Stream(StreamingResponse):
        """Closes the body iterator however the response ends (client gone included), so the
        request leaves the batch and its slot is freed at once."""

        async def __call__(self, scope, receive, send):  # type: ignore[override]
            try:
                await super().__call__(scope, receive, send)
            finally:
                await self.body_iterator.aclose()  # type: ignore[attr-defined]

    async def ping(request: Request) -> Response:
        if state.ready:
            return JSONResponse({"status": "Healthy"})
        status = "Failed" if state.failure or state.engine is not None else "Loading"
        return JSONResponse({"status": status, "error": state.failure}, status_code=503)

    async def stats(request: Request) -> Response:
        body: dict[str, Any] = {
            "ready": state.ready,
            "in_flight": state.in_flight,
            "requests_total": state.requests_total,
        }
        if state.engine is not None and state.options is not None:
            body.update(state.engine.stats())
            body["max_rolling_batch_size"] = state.options.engine.max_rolling_batch_size
            body["max_model_len"] = state.engine.max_model_len
            body["device"] = state.engine.device
        return JSONResponse(body)

    async def invocations(request: Request) -> Response:
        if not state.ready or state.engine is None or state.options is None:
            return _error("model is not ready", 503)
        engine, opts = state.engine, state.options
        try:
            raw = await _read_body(request, state.max_body_bytes)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BadRequest(f"request body is not JSON: {exc}") from None
            req = parse_invocation(body)
            if isinstance(req, ChatRequest):
                if not engine.has_chat_template:
                    raise BadRequest("messages: this model's tokenizer has no chat template; "
                                     "send inputs instead")
                input_ids = await _off_loop(engine.encode_chat,
                                            [m.model_dump() for m in req.messages])
                max_new = req.max_tokens
                sampling = chat_sampling(req, engine.vocab_size)
                stops = req.stops()
            else:
                input_ids = await _off_loop(engine.encode, req.inputs)
                max_new = req.parameters.max_new_tokens
                sampling = lmi_sampling(req.parameters, engine.vocab_size)
                stops = req.parameters.stop_sequences or []
            if max_new is None:
                max_new = min(opts.max_new_tokens_default, engine.max_model_len - len(input_ids))
            limit = engine.max_model_len
            if len(input_ids) + max(max_new, 1) > limit:
                raise BadRequest(
                    f"input of {len(input_ids)} tokens + max_new_tokens {max_new} exceeds "
                    f"max_model_len {limit}"
                )
        except BadRequest as exc:
            return _error(str(exc), exc.status)

        state.requests_total += 1
        gen = _Generation(engine, input_ids, max_new, sampling, stops, req.stream)
        if req.stream:
            events = _stream_chat(state, req, gen) if isinstance(req, ChatRequest) else \
                _stream_lmi(req, gen)
            return await _start_stream(events)
        try:
            result = await _with_disconnect(request, _run_to_end(state, gen))
        except EngineError as exc:
            log.error("generation failed: %s", exc)
            return _error(f"model error: {exc}", 424)
        if result is None:  # client went away; nothing to answer
            return Response(status_code=499)
        if isinstance(req, ChatRequest):
            return JSONResponse(_chat_body(state.next_chat_id(), req, gen))
        return JSONResponse(_lmi_body(req, gen))

    async def _start_stream(events: AsyncIterator[bytes]) -> Response:
        """LMI answers an error before the first token with a status code; after it, with a
        last line. So wait for the first line before committing to 200."""
        try:
            first = await events.__anext__()
        except EngineError as exc:
            return _error(f"model error: {exc}", 424)
        except StopAsyncIteration:
            first = b""

        async def body() -> AsyncIterator[bytes]:
            try:
                if first:
                    yield first
                async for line in events:
                    yield line
            finally:
                await events.aclose()  # type: ignore[attr-defined]

        return _Stream(body(), media_type=JSONLINES)

    async def _stream_lmi(req: InvocationRequest, gen: _Generation) -> AsyncIterator[bytes]:
        def line(step: Step, piece: str) -> bytes:
            out: dict[str, Any] = {
                "token": {"id": step.token_id, "text": piece, "log_prob": step.log_prob}
            }
            if gen.finish_reason is not None:
                out.update(_lmi_final(req, gen))
            return _json(out) + b"\n"

        def error_line(exc: EngineError) -> bytes:
            return _json({
                "token": {"id": -1, "text": "", "log_prob": -1, "special_token": True},
                "generated_text": gen.text,
                "details": {"finish_reason": "error", "generated_tokens": None, "inputs": None},
                "error": str(exc), "code": 424,
            }) + b"\n"

        async for chunk in _lines(state, gen, line, error_line):
            yield chunk

    async def _stream_chat(state: ServerState, req: ChatRequest, gen: _Generation
                           ) -> AsyncIterator[bytes]:
        cid, created = state.next_chat_id(), int(time.time())

        def line(step: Step, piece: str) -> bytes:
            delta: dict[str, Any] = {"content": piece}
            if len(gen.token_ids) == 1:
                delta["role"] = "assistant"
            choice = {
                "index": 0, "delta": delta,
                "logprobs": _chat_logprobs([(piece, step.log_prob)]) if req.logprobs else None,
                "finish_reason": gen.finish_reason,
            }
            chunk: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk",
                                     "created": created, "choices": [choice]}
            if gen.finish_reason is not None:
                chunk["usage"] = _usage(gen)
            return _json(chunk) + b"\n"

        def error_line(exc: EngineError) -> bytes:
            return _json({"id": cid, "object": "chat.completion.chunk", "created": created,
                          "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}],
                          "error": str(exc), "code": 424}) + b"\n"

        async for chunk in _lines(state, gen, line, error_line):
            yield chunk

    return Starlette(routes=[
        Route("/ping", ping, methods=["GET"]),
        Route("/invocations", invocations, methods=["POST"]),
        Route("/debug/stats", stats, methods=["GET"]),
    ])


async def _off_loop(fn: Any, arg: Any) -> Any:
    """Tokenize big inputs in a worker thread so /ping and streams never wait on them."""
    if len(str(arg)) < 20_000:
        return fn(arg)
    return await asyncio.to_thread(fn, arg)


class _slot:
    """At most max_rolling_batch_size requests in the engine; the rest wait here, in order."""

    def __init__(self, state: ServerState):
        self.state = state

    async def __aenter__(self) -> None:
        st = self.state
        if st.slots is None:
            assert st.options is not None
            st.slots = asyncio.Semaphore(st.options.engine.max_rolling_batch_size)
        await st.slots.acquire()
        st.in_flight += 1

    async def __aexit__(self, *exc: object) -> None:
        assert self.state.slots is not None
        self.state.in_flight -= 1
        self.state.slots.release()


async def _lines(state: ServerState, gen: _Generation, line: Any, error_line: Any
                 ) -> AsyncIterator[bytes]:
    """One line per token, in a slot. An engine error before the first line propagates (the
    caller answers it with a status code); after it, it becomes the stream's last line."""
    sent = False
    async with _slot(state), aclosing(gen.events()) as events:
        try:
            async for step, piece in events:
                yield line(step, piece)
                sent = True
        except EngineError as exc:
            if not sent:
                raise
            log.error("generation failed mid-stream: %s", exc)
            yield error_line(exc)


async def _run_to_end(state: ServerState, gen: _Generation) -> bool:
    async with _slot(state), aclosing(gen.events()) as events:
        async for _ in events:
            pass
    return True


async def _with_disconnect(request: Any, coro: Any) -> Any:
    """Run coro; if the client disconnects first, cancel it (freeing its slot) and return None."""
    task = asyncio.ensure_future(coro)

    async def watch() -> None:
        while True:
            msg = await request.receive()
            if msg["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with suppress(asyncio.CancelledError, EngineError):
        await task
    return None


def _lmi_final(req: InvocationRequest, gen: _Generation) -> dict[str, Any]:
    text = req.inputs + gen.text if req.parameters.return_full_text else gen.text
    out: dict[str, Any] = {"generated_text": text}
    out["details"] = {
        "finish_reason": gen.finish_reason,
        "generated_tokens": len(gen.token_ids),
        "inputs": req.inputs,
        "inputs_tokens": len(gen.input_ids),
    }
    return out


def _lmi_body(req: InvocationRequest, gen: _Generation) -> dict[str, Any]:
    final = _lmi_final(req, gen)
    if not req.parameters.details:
        return {"generated_text": final["generated_text"]}
    final["details"]["tokens"] = gen.tokens
    return final


def _usage(gen: _Generation) -> dict[str, int]:
    n_in, n_out = len(gen.input_ids), len(gen.token_ids)
    return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}


def _chat_logprobs(pairs: list[tuple[str, float | None]]) -> dict[str, Any]:
    return {"content": [
        {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
        for t, lp in pairs
    ]}


def _chat_body(cid: str, req: ChatRequest, gen: _Generation) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": gen.text},
            "logprobs": None,
            "finish_reason": gen.finish_reason,
        }],
        "usage": _usage(gen),
    }


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # transformers' progress bars and chatter would bury the lines that matter.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # On CPU the server sizes the KV cache itself, so transformers' complaints that psutil is
    # missing (it would size the cache from free RAM) would only read like a failure reason.
    logging.getLogger("ContinuousBatchingLogger").addFilter(
        lambda record: "psutil" not in record.getMessage()
    )
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _fail(reason: str) -> None:
    reason = " ".join(reason.split())[:2000]  # one line, bounded
    print(FAILED_MARK + reason, file=sys.stderr, flush=True)


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    if isinstance(cause, MemoryError) or "out of memory" in str(cause).lower():
        return f"out of memory while loading the model: {exc}"
    if isinstance(exc, ModelLoadError | OptionError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lmiflow.serving.server", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--model-dir", required=True, type=Path)
    ap.add_argument("--port", required=True, type=int)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    args = ap.parse_args(argv)
    _configure_logging()
    if args.host not in LOOPBACK_HOSTS:
        _fail(f"--host {args.host}: the local server binds loopback only (127.0.0.1)")
        return 2
    if not (args.model_dir / "serving.properties").is_file() and not args.model_dir.is_dir():
        _fail(f"--model-dir {args.model_dir}: no such directory")
        return 2

    import uvicorn

    state = ServerState(args.model_dir, args.max_body_bytes)
    config = uvicorn.Config(
        build_app(state), host=args.host, port=args.port, log_level="warning",
        access_log=False, timeout_graceful_shutdown=5, log_config=None,
    )
    server = uvicorn.Server(config)

    def load() -> None:
        try:
            state.load()
        except BaseException as exc:
            log.debug("load failed", exc_info=True)
            traceback.print_exc(file=sys.stderr)
            state.failure = _reason(exc)
            _fail(state.failure)
            server.should_exit = True

    def watch() -> None:
        """A server whose generation loop died must not look healthy to its parent: say why
        and exit, so the target reports Failed with that reason."""
        while not server.should_exit:
            engine = state.engine
            if engine is not None and not engine.stopping and not engine.alive():
                err = engine.manager.background_thread_status.fatal_error
                state.failure = f"generation loop stopped: {type(err).__name__}: {err}"
                _fail(state.failure)
                server.should_exit = True
                return
            time.sleep(1.0)

    threading.Thread(target=load, name="model-loader", daemon=True).start()
    threading.Thread(target=watch, name="engine-watch", daemon=True).start()
    log.info("listening on http://%s:%d (pid %d)", args.host, args.port, os.getpid())
    try:
        server.run()
    finally:
        if state.engine is not None:
            state.engine.shutdown()
    if state.failure:
        return 1
    if not server.started:
        _fail(f"could not listen on {args.host}:{args.port}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
