"""Gateway retry rules with fake dependencies: UNAVAILABLE is retried with backoff inside the deadline and
then reported naming the dependency; INVALID_ARGUMENT, NOT_FOUND and DEADLINE_EXCEEDED are never retried."""
from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from lookalike.embedder_client import EmbedderImageError
from lookalike.search.v1 import search_pb2
from lookalike.v1 import types_pb2
from lookalike_gateway.errors import ApiError, Deadline
from lookalike_gateway.retry import POLICY, RetryPolicy

from .gateway_fakes import FakeRpcError, fake_clock, make_gateway


class FlakyEmbedder:
    """Raises the queued failures one per call, then answers a unit vector."""

    def __init__(self, *failures: Exception, forever: Exception | None = None):
        self.failures = list(failures)
        self.forever = forever
        self.calls = 0
        self.timeouts: list[float] = []

    def embed(self, image, timeout, request_id=None):
        self.calls += 1
        self.timeouts.append(timeout)
        if self.failures:
            raise self.failures.pop(0)
        if self.forever:
            raise self.forever
        return np.ones(8, dtype=np.float32) / np.sqrt(8)


class FlakySearch:
    """SearchByVector: raises the queued failures one per call, then answers one result."""

    def __init__(self, *failures: Exception, forever: Exception | None = None):
        self.failures = list(failures)
        self.forever = forever
        self.calls = 0

    def SearchByVector(self, request, timeout, metadata=()):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        if self.forever:
            raise self.forever
        return search_pb2.SearchByVectorResponse(results=[types_pb2.SearchResult(
            product=types_pb2.Product(id="p1"), score=0.9)])


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 200)).save(out, "JPEG")
    return out.getvalue()


def search(gateway, image: bytes, seconds: float):
    return gateway.search_by_image(image, 5, types_pb2.Filter(), Deadline(seconds))


@pytest.mark.parametrize("failure", [
    FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad image"),
    EmbedderImageError("corrupt", "cannot decode"),
])
def test_invalid_argument_from_the_embedder_is_never_retried(tmp_path, jpeg, failure):
    embedder = FlakyEmbedder(forever=failure)
    with pytest.raises(ApiError) as err:
        search(make_gateway(tmp_path, embedder, FlakySearch()), jpeg, 2.0)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert embedder.calls == 1


def test_unavailable_embedder_is_retried_then_succeeds(tmp_path, jpeg, monkeypatch):
    fake_clock(monkeypatch)  # the backoff happens on the clock the deadline reads, whatever the machine's load
    embedder = FlakyEmbedder(FakeRpcError(grpc.StatusCode.UNAVAILABLE), FakeRpcError(grpc.StatusCode.UNAVAILABLE))
    results, cache_hit, *_ = search(make_gateway(tmp_path, embedder, FlakySearch()), jpeg, 2.0)
    assert [r.product.id for r in results] == ["p1"] and not cache_hit
    assert embedder.calls == 3
    assert embedder.timeouts[2] < embedder.timeouts[0]  # every try gets only what is left of the deadline


def test_embedder_down_is_503_naming_it_within_the_deadline(tmp_path, jpeg, monkeypatch):
    clock = fake_clock(monkeypatch)  # a stall of the loaded machine would otherwise eat the 0.8 s before a retry
    embedder = FlakyEmbedder(forever=FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    with pytest.raises(ApiError) as err:
        search(make_gateway(tmp_path, embedder, FlakySearch()), jpeg, 0.8)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert "embedder" in err.value.message and "connection refused" in err.value.message
    assert clock.now <= 0.8  # gave up within the deadline
    # backoff 50, 100, 200, 400 ms: a handful of tries, not a busy loop
    assert 2 <= embedder.calls <= 6, embedder.calls


def test_an_embedder_known_not_ready_gets_nothing_sent_then_503_naming_it(tmp_path, jpeg, monkeypatch):
    """A restarted TorchServe accepts requests before its model is loaded and queues them until the
    deadline (504); while the readiness probe says it is not ready, queries are held back and retried."""
    fake_clock(monkeypatch)  # the 0.5 s deadline means the same on a loaded machine
    embedder = FlakyEmbedder()
    gateway = make_gateway(tmp_path, embedder, FlakySearch())
    gateway.embedder_ready = lambda: False
    with pytest.raises(ApiError) as err:
        search(gateway, jpeg, 0.5)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "embedder" in err.value.message
    assert "not ready" in err.value.message and embedder.calls == 0
    ready = iter([False, False, True])  # ready again within the deadline: answered
    gateway.embedder_ready = lambda: next(ready, True)
    results, cache_hit, *_ = search(gateway, jpeg, 10.0)
    assert [r.product.id for r in results] == ["p1"] and embedder.calls == 1


def test_embedder_deadline_exceeded_is_504_and_not_retried(tmp_path, jpeg):
    embedder = FlakyEmbedder(forever=FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED))
    with pytest.raises(ApiError) as err:
        search(make_gateway(tmp_path, embedder, FlakySearch()), jpeg, 2.0)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "embedder" in err.value.message
    assert embedder.calls == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.DEADLINE_EXCEEDED])
def test_search_service_errors_that_are_not_unavailable_are_not_retried(tmp_path, jpeg, code):
    fake = FlakySearch(forever=FakeRpcError(code))
    with pytest.raises(ApiError) as err:
        search(make_gateway(tmp_path, FlakyEmbedder(), fake), jpeg, 2.0)
    assert err.value.code == code
    assert fake.calls == 1


def test_search_service_down_is_503_naming_it(tmp_path, jpeg, monkeypatch):
    clock = fake_clock(monkeypatch)  # a stall of the loaded machine would otherwise eat the 0.6 s before a retry
    fake = FlakySearch(forever=FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect"))
    with pytest.raises(ApiError) as err:
        search(make_gateway(tmp_path, FlakyEmbedder(), fake), jpeg, 0.6)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "search service" in err.value.message
    assert clock.now <= 0.6  # gave up within the deadline
    assert fake.calls >= 2


def test_search_service_back_after_a_blip(tmp_path, jpeg):
    fake = FlakySearch(FakeRpcError(grpc.StatusCode.UNAVAILABLE))
    results, *_ = search(make_gateway(tmp_path, FlakyEmbedder(), fake), jpeg, 2.0)
    assert results and fake.calls == 2


def test_one_policy_backs_off_exponentially_up_to_its_cap_and_never_past_the_deadline():
    policy = RetryPolicy(first_backoff_s=0.01, max_backoff_s=0.04, min_attempt_s=0.01)
    assert [policy.backoff(n) for n in range(4)] == [0.01, 0.02, 0.04, 0.04]
    assert policy.pause(0, Deadline(5.0))  # room: slept 10 ms
    assert not policy.pause(0, Deadline(0.015))  # 10 ms + 10 ms for the attempt do not fit: give up at once
    assert POLICY.retryable == (grpc.StatusCode.UNAVAILABLE,)


def test_the_policy_retries_unavailable_then_names_the_dependency(monkeypatch):
    fake_clock(monkeypatch)  # the 0.2 s deadline means the same on a loaded machine
    policy = RetryPolicy(first_backoff_s=0.001, max_backoff_s=0.002, min_attempt_s=0.001)
    attempts = []

    def down(timeout):
        attempts.append(timeout)
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
    with pytest.raises(ApiError) as err:
        policy.call("the thing", "calling the thing", down, Deadline(0.2))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "the thing is unavailable" in err.value.message
    assert len(attempts) > 1 and all(t <= 0.2 for t in attempts)
    attempts.clear()

    def refused(timeout):
        attempts.append(timeout)
        raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad")
    with pytest.raises(ApiError) as err:
        policy.call("the thing", "calling the thing", refused, Deadline(5))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and len(attempts) == 1
