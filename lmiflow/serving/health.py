"""GET /ping (SageMaker's health check) and GET /debug/stats (what tests and perf read)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lmiflow.serving.state import ServerState


async def ping(state: ServerState, request: Request) -> Response:
    if state.ready:
        return JSONResponse({"status": "Healthy"})
    status = "Failed" if state.failure or state.engine is not None else "Loading"
    return JSONResponse({"status": status, "error": state.failure}, status_code=503)


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
