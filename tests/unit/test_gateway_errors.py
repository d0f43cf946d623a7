"""errors.py: ApiError, Deadline, dependency errors, and the one status table they go through."""
from __future__ import annotations

import grpc
import pytest

from lookalike import status
from lookalike.status import GRPC_TO_HTTP, grpc_status, http_status
from lookalike_gateway.errors import DEFAULT_RETRY_AFTER_S, SEARCH_NAME, ApiError, Deadline, dependency_error

from .gateway_fakes import FakeRpcError, fake_clock


def test_status_table_round_trips_the_codes_clients_see():
    assert http_status(grpc.StatusCode.INVALID_ARGUMENT) == 400
    assert http_status(grpc.StatusCode.NOT_FOUND) == 404
    assert http_status(grpc.StatusCode.RESOURCE_EXHAUSTED) == 429
    assert http_status(grpc.StatusCode.UNAVAILABLE) == 503
    assert http_status(grpc.StatusCode.DEADLINE_EXCEEDED) == 504
    for code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        assert grpc_status(GRPC_TO_HTTP[code]) == code
    assert grpc_status(413) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_status(415) == grpc.StatusCode.INVALID_ARGUMENT


def test_deadline_runs_out(monkeypatch):
    """On a clock the test moves (a loaded machine can stall longer than any short deadline between two lines)."""
    clock = fake_clock(monkeypatch)
    deadline = Deadline(0.01)
    assert deadline.remaining() == pytest.approx(0.01)
    clock.advance(0.005)
    assert deadline.remaining() == pytest.approx(0.005) and deadline.left() == pytest.approx(0.005)
    clock.advance(0.01)
    assert deadline.left() == pytest.approx(-0.005)  # left() never raises
    with pytest.raises(ApiError) as err:
        deadline.remaining("the search call")
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "before the search call" in err.value.message


@pytest.mark.parametrize("code, expected, says", [
    (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, "search service is unavailable: connection refused"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED, "did not answer within the deadline"),
    (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND, "connection refused"),
    (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT, "connection refused"),
    (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, "search service failed: INTERNAL: connection refused"),
])
def test_a_dependency_failure_names_the_dependency_or_passes_the_callers_mistake_on(code, expected, says):
    error = dependency_error(SEARCH_NAME, FakeRpcError(code, "connection refused"))
    assert error.code == expected and says in error.message


def test_a_retryable_error_carries_a_retry_hint_and_a_413_does_not():
    busy = ApiError(grpc.StatusCode.UNAVAILABLE, "busy", retry_after_s=3)
    assert {"type": "RetryInfo", "retry_delay_s": 3} in [
        {k: d[k] for k in ("type", "retry_delay_s") if k in d} for d in busy.all_details()]
    plain = ApiError(grpc.StatusCode.UNAVAILABLE, "down")
    assert any(d.get("type") == "RetryInfo" and d["retry_delay_s"] == DEFAULT_RETRY_AFTER_S
               for d in plain.all_details())
    too_big = ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big", http_status=413)
    assert too_big.all_details() == []
    assert ApiError(grpc.StatusCode.NOT_FOUND, "gone").all_details() == []


def test_prefixed_keeps_the_code_the_http_status_and_the_details():
    violation = status.bad_request("image", "not an image")
    error = ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big", http_status=413, retry_after_s=3.0,
                     details=[violation]).prefixed("image 2: ")
    assert (error.code, error.message, error.http_status) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                              "image 2: too big", 413)
    assert error.retry_after_s == 3.0 and error.details == [violation]  # the field violation reaches the client
    same = ApiError(grpc.StatusCode.NOT_FOUND, "x")
    assert same.prefixed("") is same
