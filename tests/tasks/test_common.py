"""Which faults a step retries, and how long it waits: jittered exponential backoff."""

import random
from types import SimpleNamespace

import botocore.exceptions
import httpx
import pytest
from botocore.exceptions import ClientError
from lmiflow.tasks import common
from lmiflow.tasks.common import (
    artifact_key,
    backoff_s,
    is_transient,
    retry_transient,
)

from lmiflow.errors import StepFailed, UserInputError
from lmiflow.targets.base import WaitTimeout


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "x"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "CreateEndpoint")


# ---- backoff ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("base", "attempt", "bound"), [
    ("2", 0, 2.0), ("2", 1, 4.0), ("2", 3, 16.0), ("2", 4, 32.0),
    ("2", 5, 60.0), ("2", 9, 60.0),  # 64 and 1024 are capped at 60 s
    ("0.5", 2, 2.0), ("0.5", 7, 60.0),
])
def test_backoff_upper_bound_doubles_per_attempt_and_is_capped_at_60_s(
        monkeypatch, base, attempt, bound):
    monkeypatch.setenv("LMIFLOW_RETRY_BASE_S", base)
    draws = []
    monkeypatch.setattr(random, "uniform", lambda lo, hi: draws.append((lo, hi)) or hi)
    assert backoff_s(attempt) == bound
    assert draws == [(0, bound)]  # full jitter: anywhere from no wait to the bound


def test_backoff_base_defaults_to_2_s(monkeypatch):
    monkeypatch.delenv("LMIFLOW_RETRY_BASE_S", raising=False)
    monkeypatch.setattr(random, "uniform", lambda lo, hi: hi)
    assert [backoff_s(a) for a in range(3)] == [2.0, 4.0, 8.0]


def test_backoff_jitter_spreads_over_the_whole_interval(monkeypatch):
    """Two clients throttled together must not retry together: waits differ and cover
    [0, bound] instead of sitting at one value."""
    monkeypatch.setenv("LMIFLOW_RETRY_BASE_S", "2")
    random.seed(1234)
    waits = [backoff_s(2) for _ in range(400)]  # bound 8 s
    assert all(0 <= w <= 8 for w in waits)
    assert min(waits) < 0.5 and max(waits) > 7.5
    assert len(set(waits)) == len(waits)
    assert 3.5 < sum(waits) / len(waits) < 4.5  # uniform: mean at half the bound


# ---- transient vs permanent ------------------------------------------------------------------

# The codes AWS documents as throttling or server-side (retry-worthy) errors.
THROTTLING_AND_SERVER_CODES = [
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "ServiceUnavailable", "ServiceUnavailableException",
    "InternalFailure", "InternalServerError", "InternalError", "RequestTimeout",
    "RequestTimeoutException", "SlowDown", "ModelNotReadyException",
]


@pytest.mark.parametrize("code", THROTTLING_AND_SERVER_CODES)
def test_throttling_and_server_error_codes_are_transient_even_with_a_400(code):
    assert is_transient(client_error(code, 400))


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_http_429_and_5xx_are_transient_whatever_the_code(status):
    assert is_transient(client_error("SomethingNew", status))


@pytest.mark.parametrize(("code", "status"), [
    ("ValidationException", 400), ("ResourceLimitExceeded", 400),
    ("AccessDeniedException", 403), ("ResourceNotFound", 404), ("SomethingNew", 501),
    ("", 0),
])
def test_client_errors_a_retry_cannot_fix_are_permanent(code, status):
    assert not is_transient(client_error(code, status))


def test_client_error_without_error_or_metadata_is_permanent():
    exc = ClientError({}, "CreateEndpoint")
    exc.response = {}
    assert not is_transient(exc)


@pytest.mark.parametrize("exc", [
    ConnectionError("reset"), ConnectionResetError("reset by peer"),
    ConnectionRefusedError("refused"),
    TimeoutError("read timed out"),
    botocore.exceptions.EndpointConnectionError(endpoint_url="https://sagemaker"),
    botocore.exceptions.ConnectTimeoutError(endpoint_url="https://sagemaker"),
    botocore.exceptions.ReadTimeoutError(endpoint_url="https://sagemaker"),
    httpx.ConnectError("refused"), httpx.RemoteProtocolError("peer closed"),
], ids=lambda e: type(e).__name__)
def test_dropped_connections_and_timeouts_are_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    UserInputError("workload.concurrency", "must be > 0"),
    StepFailed("endpoint Failed"),
    WaitTimeout("not InService within 900 s"),  # waited long enough: retrying waits again
    ValueError("bad"), RuntimeError("bug"), KeyError("x"),
    httpx.HTTPStatusError("400", request=httpx.Request("POST", "http://x"),
                          response=httpx.Response(400)),
], ids=lambda e: type(e).__name__)
def test_bad_input_failed_steps_wait_timeouts_and_bugs_are_permanent(exc):
    assert not is_transient(exc)


def test_bad_input_is_permanent_even_when_it_is_also_a_connection_error():
    class Both(UserInputError, ConnectionError):
        pass

    assert not is_transient(Both("target.region", "no such region"))


# ---- the Prefect retry condition -------------------------------------------------------------

def failed_state(exc: BaseException):
    def result():
        raise exc
    return SimpleNamespace(result=result)


@pytest.fixture
def sleeps(monkeypatch):
    """Waits taken (no real sleeping); backoff at its upper bound, base 1 s."""
    monkeypatch.setenv("LMIFLOW_RETRY_BASE_S", "1")
    monkeypatch.setattr(random, "uniform", lambda lo, hi: hi)
    taken: list[float] = []
    monkeypatch.setattr(common.time, "sleep", taken.append)
    return taken


def test_retry_transient_retries_a_transient_fault_after_the_backoff_of_its_attempt(sleeps):
    assert retry_transient(None, SimpleNamespace(run_count=3), failed_state(
        client_error("ThrottlingException", 400))) is True
    assert sleeps == [4.0]  # third run: attempt 2, bound 1 x 2^2


@pytest.mark.parametrize("run_count", [None, 0, 1])
def test_retry_transient_first_run_waits_the_first_backoff(sleeps, run_count):
    assert retry_transient(None, SimpleNamespace(run_count=run_count),
                           failed_state(ConnectionError())) is True
    assert sleeps == [1.0]


def test_retry_transient_without_run_count_counts_as_the_first_run(sleeps):
    assert retry_transient(None, SimpleNamespace(), failed_state(TimeoutError())) is True
    assert sleeps == [1.0]


def test_retry_transient_does_not_retry_a_permanent_fault(sleeps):
    assert retry_transient(None, SimpleNamespace(run_count=1),
                           failed_state(StepFailed("endpoint Failed"))) is False
    assert sleeps == []


def test_retry_transient_does_not_retry_a_success(sleeps):
    assert retry_transient(None, SimpleNamespace(run_count=1),
                           SimpleNamespace(result=lambda: 42)) is False
    assert sleeps == []


# ---- artifact keys ---------------------------------------------------------------------------

@pytest.mark.parametrize(("endpoint", "step", "key"), [
    ("my-endpoint", "choose_instance", "my-endpoint-choose-instance"),
    ("Llama_3.1 Prod", "gate", "llama-3-1-prod-gate"),
    ("-x-", "promote-wait", "x--promote-wait"),
])
def test_artifact_key_is_lowercase_dashes_only(endpoint, step, key):
    assert artifact_key(endpoint, step) == key


# ---- progress listeners ----------------------------------------------------------------------

def test_progress_reaches_every_listener_until_it_unsubscribes_and_a_broken_one_is_ignored():
    got: list[tuple] = []

    def broken(step, fraction, text):
        raise RuntimeError("display gone")

    remove_broken = common.add_progress_listener(broken)
    remove = common.add_progress_listener(lambda *a: got.append(a))
    try:
        common.report_progress("benchmark", 0.5, "concurrency 8: 4/8")
        remove()
        remove()  # twice: no error
        common.report_progress("benchmark", 1.0, "done")
    finally:
        remove_broken()
    assert got == [("benchmark", 0.5, "concurrency 8: 4/8")]
