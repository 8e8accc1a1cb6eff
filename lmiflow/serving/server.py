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
import logging
import os
import sys
import threading
import time
import traceback
from functools import partial
from pathlib import Path

from lmiflow.serving.options import OptionError
from lmiflow.serving.state import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    ModelLoadError,
    ServerState,
)

log = logging.getLogger("lmiflow.server")

FAILED_MARK = "lmiflow-server FAILED: "
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# On SIGTERM, requests in flight get this long to finish; the rest then end with an error (a
# stream's last line says so), and FLUSH_S later the process exits whatever is left.
DEFAULT_DRAIN_S = 3.0
FLUSH_S = 2.0


def build_app(state: ServerState):
    """The routes; each handler module holds one concern (health, invocations, streaming)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from lmiflow.serving import health, invoke

    return Starlette(routes=[
        Route("/ping", partial(health.ping, state), methods=["GET"]),
        Route("/invocations", partial(invoke.invocations, state), methods=["POST"]),
        Route("/debug/stats", partial(health.stats, state), methods=["GET"]),
    ])


def http_server(state: ServerState, host: str, port: int, drain_s: float = DEFAULT_DRAIN_S):
    """A uvicorn server for the app whose shutdown drains, then ends the requests still in
    flight (uvicorn alone would cut their connections when its grace period ends)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets=None):  # type: ignore[no-untyped-def]
            state.begin_shutdown(drain_s)
            await super().shutdown(sockets)

    config = uvicorn.Config(
        build_app(state), host=host, port=port, log_level="warning", access_log=False,
        timeout_graceful_shutdown=drain_s + FLUSH_S, log_config=None,
    )
    return DrainingServer(config)


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
    ap.add_argument("--body-timeout-s", type=float, default=DEFAULT_BODY_TIMEOUT_S)
    ap.add_argument("--drain-s", type=float, default=DEFAULT_DRAIN_S,
                    help="on SIGTERM, how long requests in flight may take to finish")
    args = ap.parse_args(argv)
    _configure_logging()
    if args.host not in LOOPBACK_HOSTS:
        _fail(f"--host {args.host}: the local server binds loopback only (127.0.0.1)")
        return 2
    if not (args.model_dir / "serving.properties").is_file() and not args.model_dir.is_dir():
        _fail(f"--model-dir {args.model_dir}: no such directory")
        return 2

    state = ServerState(args.model_dir, args.max_body_bytes, args.body_timeout_s)
    server = http_server(state, args.host, args.port, args.drain_s)

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
