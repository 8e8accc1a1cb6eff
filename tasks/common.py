"""What every step task shares: which errors are worth a retry (with jittered exponential
backoff), artifact keys, and a progress hook the CLI and Prefect both listen to."""

from __future__ import annotations

import contextlib
import os
import random
import re
import time
from collections.abc import Callable

from lmiflow.errors import StepFailed, UserInputError

TRANSIENT_AWS_CODES = {
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "ServiceUnavailable", "ServiceUnavailableException",
    "InternalFailure", "InternalServerError", "InternalError", "RequestTimeout",
    "RequestTimeoutException", "SlowDown", "ModelNotReadyException",
}
RETRIES = 5  # a step makes up to five control-plane calls; each may be throttled once


def is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx, dropped connections: yes. Bad input, validation, Failed: no."""
    if isinstance(exc, UserInputError | StepFailed):
        return False
    if isinstance(exc, ConnectionError):
        return True
    if isinstance(exc, TimeoutError) and type(exc).__name__ != "WaitTimeout":
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        code = response.get("Error", {}).get("Code", "")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in TRANSIENT_AWS_CODES or status in (429, 500, 502, 503, 504)
    name = type(exc).__name__
    return name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                    "ConnectError", "RemoteProtocolError")


def backoff_s(attempt: int) -> float:
    """Exponential backoff with full jitter: uniform(0, base x 2^attempt), capped at 60 s.

    Done here because Prefect's retry_jitter_factor has no effect on task retries today."""
    base = float(os.environ.get("LMIFLOW_RETRY_BASE_S", "2"))
    return random.uniform(0, min(60.0, base * 2**attempt))


def retry_transient(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry only transient faults, after a jittered pause."""
    try:
        state.result()
    except Exception as exc:
        if not is_transient(exc):
            return False
        attempt = getattr(task_run, "run_count", 1) or 1
        time.sleep(backoff_s(attempt - 1))
        return True
    return False


def artifact_key(endpoint: str, step: str) -> str:
    """`<endpoint>-<step>`, lowercased to Prefect's ^[a-z0-9-]*$ so history accumulates."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{endpoint}-{step}".lower()).strip("-")


# -- progress: the CLI shows a live bar; Prefect gets a progress artifact -------------------
ProgressFn = Callable[[str, float, str], None]
_listeners: list[ProgressFn] = []


def add_progress_listener(fn: ProgressFn) -> Callable[[], None]:
    _listeners.append(fn)
    return lambda: _listeners.remove(fn) if fn in _listeners else None


def report_progress(step: str, fraction: float, text: str) -> None:
    for fn in list(_listeners):
        with contextlib.suppress(Exception):  # a display must never break a deploy
            fn(step, fraction, text)
