"""GET /ping (SageMaker's health check) and GET /debug/stats (what tests and perf read)."""

from __future__ import annotations

import os
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lmiflow.serving.state import ServerState

# Whoever starts the server may give it a value to echo on /ping (an environment variable:
# the command line is readable by every user). The local target then knows that what
# answers on the port is the process it started, not one that took the port first.
NONCE_ENV = "LMIFLOW_SERVER_NONCE"
NONCE_HEADER = "X-Lmiflow-Server-Nonce"


async def ping(state: ServerState, request: Request) -> Response:
    headers = {NONCE_HEADER: nonce} if (nonce := os.environ.get(NONCE_ENV)) else None
    if state.ready:
        return JSONResponse({"status": "Healthy"}, headers=headers)
    status = "Failed" if state.failure or state.engine is not None else "Loading"
    return JSONResponse({"status": status, "error": state.failure}, status_code=503,
                        headers=headers)


async def stats(state: ServerState, request: Request) -> Response:
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
