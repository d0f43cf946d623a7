"""The embedder in the gateway's /metrics on the shared real stack: requests in flight while an ingest
stream runs, images per ingest burst, and TorchServe's batch-size and queue metrics re-exported from its
loopback metrics API (lookalike.stack sets LOOKALIKE_GATEWAY_EMBEDDER_METRICS_URL)."""
from __future__ import annotations

import threading
import uuid

import grpc
import httpx
import psutil
import pytest

from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc, types_pb2

from tests.conftest import clothing_split
from tests.e2e.support import metric, upsert, variant

FAILED = lookalike_pb2.UpsertProductsResponse.OUTCOME_FAILED  # an acknowledgement of a product not stored

pytestmark = pytest.mark.e2e
PHOTOS = 24  # one ingest stream; the gateway sends it to the embedder in micro-batches (upsert_batch_size 32)


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.http_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def stub(stack):
    with grpc.insecure_channel(stack.grpc_address) as channel:
        yield lookalike_pb2_grpc.LookalikeStub(channel)


def test_embedder_queue_depth_batch_sizes_and_torchserve_metrics(stack, http, stub):
    photos = sorted(clothing_split("validation").glob("*/*.jpg"))[:PHOTOS]
    run = uuid.uuid4().hex[:8]
    # images no cache has seen: every one of them goes to the embedder
    items = [(types_pb2.Product(id=f"observability-{run}/{i}", title=photo.stem), variant(photo, seed=i + 7))
             for i, photo in enumerate(photos)]
    before = {name: metric(http, name) for name in (
        "lookalike_gateway_embedder_batch_size_sum", "lookalike_gateway_embedder_batch_size_count",
        "lookalike_embedder_batch_size_sum", "lookalike_embedder_batch_size_count")}
    errors_before = metric(http, "lookalike_gateway_embedder_metrics_scrapes_total", outcome="error")
    depth_seen: list[float] = []
    finished = threading.Event()
    outcome: dict = {}

    def ingest() -> None:
        try:
            outcome["responses"] = upsert(stub, items, timeout=300)
        except Exception as exc:  # reported by the main thread
            outcome["error"] = exc
        finally:
            finished.set()

    worker = threading.Thread(target=ingest, daemon=True)
    worker.start()
    try:
        while not finished.is_set():
            depth_seen.append(metric(http, "lookalike_gateway_embedder_queue_depth"))
            finished.wait(0.05)
        worker.join(10)
        assert "error" not in outcome, outcome.get("error")
        assert [r.outcome != FAILED for r in outcome["responses"]] == [True] * len(items)
        # embed requests were in flight while the stream ran, and none is left once it is acknowledged
        assert max(depth_seen) >= 1, depth_seen
        assert metric(http, "lookalike_gateway_embedder_queue_depth") == 0
        sent = metric(http, "lookalike_gateway_embedder_batch_size_sum") - before[
            "lookalike_gateway_embedder_batch_size_sum"]
        bursts = metric(http, "lookalike_gateway_embedder_batch_size_count") - before[
            "lookalike_gateway_embedder_batch_size_count"]
        assert sent == len(items) and 1 <= bursts <= len(items), (sent, bursts)
        # TorchServe's own view, re-exported: its handler saw at least those images, in batches of <= 16
        handled = metric(http, "lookalike_embedder_batch_size_sum") - before["lookalike_embedder_batch_size_sum"]
        batches = metric(http, "lookalike_embedder_batch_size_count") - before["lookalike_embedder_batch_size_count"]
        assert handled >= len(items) and handled / 16 <= batches <= handled, (handled, batches)
        text = http.get("/metrics").text
        for name in ("lookalike_embedder_queue_time_ms", "lookalike_embedder_requests_total"):
            assert f"\n{name}{{" in text, name
        assert metric(http, "lookalike_gateway_embedder_metrics_scrapes_total", outcome="error") == errors_before
    finally:
        stub.DeleteProducts(lookalike_pb2.DeleteProductsRequest(product_ids=[p.id for p, _ in items]), timeout=60)
    # the page the gateway reads is TorchServe's loopback-only metrics API
    port = stack.torchserve.ports["metrics"]
    assert stack.gateway_env()["LOOKALIKE_GATEWAY_EMBEDDER_METRICS_URL"] == f"http://127.0.0.1:{port}/metrics"
    bound = {c.laddr.ip.removeprefix("::ffff:") for pid in stack.torchserve.group_pids()
             for c in psutil.Process(pid).net_connections(kind="tcp")
             if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert bound == {"127.0.0.1"}
