"""POST /invocations: read and check the request, then answer it whole or hand it to streaming.

Every way a body can be wrong is a 4xx with LMI's `code: 424` and one line naming the problem:
too big (413), too slow to arrive (408), not JSON or nested absurdly deep (400: the parser would
otherwise die of recursion and answer 500), or outside the schema and the model's limits (400).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lmiflow.serving import wire
from lmiflow.serving.engine import EngineError
from lmiflow.serving.generation import Generation, run_to_end, unless_disconnected
from lmiflow.serving.schema import (
    BadRequest,
    ChatRequest,
    InvocationRequest,
    chat_sampling,
    lmi_sampling,
    parse_invocation,
)
from lmiflow.serving.state import SHUTTING_DOWN, ServerState
from lmiflow.serving.streaming import stream_answer

log = logging.getLogger("lmiflow.server")

# LMI's request bodies nest four levels at most (messages, a message, its fields); this bound
# only stops bodies built to exhaust the parser.
MAX_JSON_DEPTH = 64


def _error(message: str, status: int) -> Response:
    return JSONResponse(wire.error_body(message), status_code=status)


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("bad Content-Length")
        if int(declared) > limit:
            raise BadRequest(f"request body over {limit} bytes", status=413)

    async def collect() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(f"request body over {limit} bytes", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise BadRequest(f"request body not received within {timeout_s:g} s",
                         status=408) from None


def _deeper_than(obj: Any, limit: int) -> bool:
    """Iterative, so the check itself cannot overflow the stack it protects."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def decode_json(raw: bytes) -> Any:
    too_deep = BadRequest(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not JSON: {exc}") from None
    if _deeper_than(body, MAX_JSON_DEPTH):
        raise too_deep
    return body


async def _off_loop(fn: Any, arg: Any) -> Any:
    """Tokenize big inputs in a worker thread so /ping and streams never wait on them."""
    if len(str(arg)) < 20_000:
        return fn(arg)
    return await asyncio.to_thread(fn, arg)


async def prepare(state: ServerState, request: Request
                  ) -> tuple[InvocationRequest | ChatRequest, Generation]:
    """The checked request and its generation, not yet started; BadRequest when it cannot be
    served as sent."""
    engine, opts = state.engine, state.options
    assert engine is not None and opts is not None
    raw = await read_body(request, state.max_body_bytes, state.body_timeout_s)
    req = parse_invocation(decode_json(raw))
    if isinstance(req, ChatRequest):
        if not engine.has_chat_template:
            raise BadRequest("messages: this model's tokenizer has no chat template; "
                             "send inputs instead")
        input_ids = await _off_loop(engine.encode_chat, [m.model_dump() for m in req.messages])
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
    return req, Generation(engine, input_ids, max_new, sampling, stops, req.stream)


async def invocations(state: ServerState, request: Request) -> Response:
    if state.stopping:
        return _error(SHUTTING_DOWN, 503)
    if not state.ready:
        return _error("model is not ready", 503)
    try:
        req, gen = await prepare(state, request)
    except BadRequest as exc:
        return _error(str(exc), exc.status)
    state.requests_total += 1
    if req.stream:
        return await stream_answer(state, req, gen)
    try:
        done = await unless_disconnected(request, run_to_end(gen, state.slot()))
    except EngineError as exc:
        log.error("generation failed: %s", exc)
        return _error(f"model error: {exc}", 424)
    if done is None:  # client went away; nothing to answer
        return Response(status_code=499)
    if isinstance(req, ChatRequest):
        return JSONResponse(wire.chat_body(state.next_chat_id(), gen))
    return JSONResponse(wire.lmi_body(req, gen))
