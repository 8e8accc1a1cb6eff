"""Streamed answers to POST /invocations: one JSON line per token, LMI's or OpenAI's chunks.

LMI answers an error before the first token with a status code; after it, with a last line.
So the first line is awaited before the response commits to 200.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.responses import JSONResponse, Response, StreamingResponse

from lmiflow.serving import wire
from lmiflow.serving.engine import EngineError
from lmiflow.serving.generation import Generation, token_lines
from lmiflow.serving.schema import ChatRequest, InvocationRequest
from lmiflow.serving.state import ServerState


class _Stream(StreamingResponse):
    """Closes the body iterator however the response ends (client gone included), so the
    request leaves the batch and its slot is freed at once."""

    async def __call__(self, scope, receive, send):  # type: ignore[override]
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def stream_answer(state: ServerState, req: InvocationRequest | ChatRequest,
                        gen: Generation) -> Response:
    if isinstance(req, ChatRequest):
        chunks = wire.ChatChunks(state.next_chat_id(), req, gen)
        events = token_lines(gen, state.slot(), chunks.line, chunks.error_line)
    else:
        events = token_lines(gen, state.slot(),
                             lambda step, piece: wire.lmi_line(req, gen, step, piece),
                             lambda message: wire.lmi_error_line(gen, message))
    try:
        first = await events.__anext__()
    except EngineError as exc:
        return JSONResponse(wire.error_body(f"model error: {exc}"), status_code=424)
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

    return _Stream(body(), media_type=wire.JSONLINES)
