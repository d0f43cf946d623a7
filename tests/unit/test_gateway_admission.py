"""Admission control of query embeddings (lookalike_gateway.admission): bounded concurrent embeds, misses
shed with UNAVAILABLE / 503 + Retry-After once the queue is full, cache hits answered meanwhile. Handshakes
(events, polling with deadlines), no sleeps."""
from __future__ import annotations

import io
import threading
import time

import grpc
import pytest
from fastapi.testclient import TestClient
from lookalike_gateway.admission import EmbedGate, EmbedQueueFull
from lookalike_gateway.auth import ApiKeyCheck
from lookalike_gateway.cache import image_digest
from lookalike_gateway.core import Dependencies
from lookalike_gateway.errors import ApiError, Deadline
from lookalike_gateway.rest import create_app
from PIL import Image

from lookalike.v1 import types_pb2

from .gateway_fakes import DictCache, FakeEmbedder, make_gateway

WAIT_S = 30.0  # generous: the machine may be loaded; every wait returns as soon as its condition holds


def photo(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (shade, 90, 200)).save(out, "JPEG")
    return out.getvalue()


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)  # polling with a deadline (a yield, not a timing assumption)


class BlockingEmbedder(FakeEmbedder):
    """Every embed waits until `release` is set; `running` counts embeds inside the embedder."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()
        self.running = 0
        self.most_running = 0

    def embed(self, image, timeout=10.0, request_id=None):
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if not self.release.wait(WAIT_S):
                raise AssertionError("the test never released the embedder")
            return super().embed(image, timeout, request_id)
        finally:
            with self.lock:
                self.running -= 1


def test_gate_refuses_beyond_concurrency_plus_queue_and_frees_on_exit():
    gate = EmbedGate(concurrency=1, queue=1, retry_after_s=2.5)
    entered, leave = threading.Event(), threading.Event()

    def hold():
        with gate.admit(WAIT_S):
            entered.set()
            leave.wait(WAIT_S)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(WAIT_S)
    got_slot = threading.Event()

    def wait_for_slot():
        with gate.admit(WAIT_S):
            got_slot.set()

    waiter = threading.Thread(target=wait_for_slot)
    waiter.start()
    wait_until(lambda: gate.admitted == 2, "the second embed to queue")
    assert not got_slot.is_set()  # one slot: it waits
    with pytest.raises(EmbedQueueFull) as refused, gate.admit(WAIT_S):
        pass
    assert refused.value.retry_after_s == 2.5
    leave.set()
    holder.join(WAIT_S)
    assert got_slot.wait(WAIT_S)
    waiter.join(WAIT_S)
    assert gate.admitted == 0
    with gate.admit(0):  # free again: admitted at once
        assert gate.admitted == 1


def test_gate_wait_for_a_slot_is_bounded_by_the_timeout():
    gate = EmbedGate(concurrency=1, queue=4, retry_after_s=1)
    with gate.admit(WAIT_S):
        with pytest.raises(TimeoutError), gate.admit(0):
            pass
        assert gate.admitted == 1  # the timed-out waiter left the queue


def test_misses_beyond_the_queue_are_shed_while_hits_are_answered(tmp_path):
    embedder = BlockingEmbedder()
    gateway = make_gateway(tmp_path, embedder=embedder, cache=DictCache(), query_embed_concurrency=1,
                           query_embed_queue=1, query_embed_retry_after_s=3)
    hit = photo(10)
    gateway.cache.put(image_digest(hit), embedder.vector(hit))

    def search(image: bytes):
        return gateway.search_by_image(image, 3, types_pb2.Filter(), Deadline(WAIT_S))

    results: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, search(photo(100 + i)))) for i in range(2)]
    threads[0].start()
    wait_until(lambda: embedder.running == 1, "the first miss to reach the embedder")
    threads[1].start()
    wait_until(lambda: gateway.embed_gate.admitted == 2, "the second miss to queue")

    with pytest.raises(ApiError) as shed:
        search(photo(200))
    assert shed.value.code == grpc.StatusCode.UNAVAILABLE
    assert shed.value.retry_after_s == 3
    assert any(d.get("type") == "RetryInfo" and d["retry_delay_s"] == 3 for d in shed.value.all_details())

    assert search(hit).cache_hit  # the gate is full: a hit does not wait for it

    embedder.release.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert [results[i].cache_hit for i in range(2)] == [False, False]
    assert embedder.most_running == 1 and embedder.calls == 2  # the shed photo never reached the embedder
    assert gateway.embed_gate.admitted == 0


def test_rest_answers_a_shed_miss_503_with_retry_after(tmp_path):
    embedder = BlockingEmbedder()
    gateway = make_gateway(tmp_path, embedder=embedder, query_embed_concurrency=1, query_embed_queue=0,
                           query_embed_retry_after_s=2)
    app = create_app(gateway, ApiKeyCheck(frozenset()), lambda: Dependencies(True, True, True))
    with TestClient(app) as client:
        first = threading.Thread(target=lambda: client.post(
            "/v1/search", files={"image": ("a.jpg", photo(1), "image/jpeg")}))
        first.start()
        wait_until(lambda: embedder.running == 1, "the first miss to reach the embedder")
        response = client.post("/v1/search", files={"image": ("b.jpg", photo(2), "image/jpeg")})
        embedder.release.set()
        first.join(WAIT_S)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    body = response.json()["error"]
    assert body["code"] == "UNAVAILABLE" and "busy embedding" in body["message"]
