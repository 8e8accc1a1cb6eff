"""One request's run through the engine, shared by the streaming and non-streaming answers:
token texts, stop sequences, the finish reason, and the batch slot it holds while it runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, aclosing, suppress
from typing import Any

from lmiflow.serving.engine import Engine, EngineError, Step

log = logging.getLogger("lmiflow.server")

FINISH_STOP = "stop_sequence"


class Generation:
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


async def run_to_end(gen: Generation, slot: AbstractAsyncContextManager[None]) -> bool:
    async with slot, aclosing(gen.events()) as events:
        async for _ in events:
            pass
    return True


async def token_lines(gen: Generation, slot: AbstractAsyncContextManager[None],
                      line: Callable[[Step, str], bytes], error_line: Callable[[str], bytes]
                      ) -> AsyncIterator[bytes]:
    """One line per token, in a slot. An engine error before the first line propagates (the
    caller answers it with a status code); after it, it becomes the stream's last line."""
    sent = False
    async with slot, aclosing(gen.events()) as events:
        try:
            async for step, piece in events:
                yield line(step, piece)
                sent = True
        except EngineError as exc:
            if not sent:
                raise
            log.error("generation failed mid-stream: %s", exc)
            yield error_line(str(exc))


async def unless_disconnected(request: Any, coro: Any) -> Any:
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
