"""What the local server's handlers share: the engine (loaded off the event loop, so /ping can
say 503 while it loads), the batch slots, the counters, and the shutdown sequence."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from lmiflow.serving.engine import Engine, EngineError
from lmiflow.serving.options import ServerOptions, load_options

log = logging.getLogger("lmiflow.server")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# A client that opened a request must finish sending its body within this many seconds, so a
# stalled or trickling upload cannot hold a connection (and its memory) forever.
DEFAULT_BODY_TIMEOUT_S = 30.0
SHUTTING_DOWN = "the server is shutting down"


class ModelLoadError(RuntimeError):
    """The model or tokenizer did not load; the message names the model."""


class ServerState:
    def __init__(self, model_dir: Path, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S):
        self.model_dir = model_dir
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.options: ServerOptions | None = None
        self.engine: Engine | None = None
        self.failure: str | None = None
        self.slots: asyncio.Semaphore | None = None
        self.in_flight = 0
        self.requests_total = 0
        self.stopping = False  # no new requests
        self.aborted = False  # requests still in flight have been ended with an error
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

    def slot(self) -> _Slot:
        return _Slot(self)

    def begin_shutdown(self, drain_s: float) -> None:
        """Refuse new requests now; end what is still running after drain_s. Called on the
        event loop when the server starts to stop (SIGTERM, SIGINT, a dead engine)."""
        self.stopping = True
        asyncio.get_running_loop().call_later(drain_s, self.abort_in_flight)

    def abort_in_flight(self) -> None:
        """End every request in flight with an engine error, so a stream closes with an error
        line and a waiting client gets a status, rather than a connection cut at exit."""
        self.aborted = True
        if self.in_flight:
            log.info("ending %d request(s) still in flight: %s", self.in_flight, SHUTTING_DOWN)
        if self.engine is not None:
            self.engine.abort(SHUTTING_DOWN)


class _Slot:
    """At most max_rolling_batch_size requests in the engine; the rest wait here, in order."""

    def __init__(self, state: ServerState):
        self.state = state

    async def __aenter__(self) -> None:
        st = self.state
        if st.slots is None:
            assert st.options is not None
            st.slots = asyncio.Semaphore(st.options.engine.max_rolling_batch_size)
        await st.slots.acquire()
        if st.aborted:  # it waited for a slot while the server stopped
            st.slots.release()
            raise EngineError(SHUTTING_DOWN)
        st.in_flight += 1

    async def __aexit__(self, *exc: object) -> None:
        assert self.state.slots is not None
        self.state.in_flight -= 1
        self.state.slots.release()
