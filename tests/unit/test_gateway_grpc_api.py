"""grpc_api.py over a real in-process gRPC server and the in-memory fakes: UpsertProducts acknowledges
each item in order (a bad one fails alone), drops what a caller that went away did not get acknowledged,
and errors end calls with the status table's code and google.rpc.Status details."""
from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest

from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc, types_pb2
from lookalike_gateway.auth import ApiKeyCheck
from lookalike_gateway.grpc_api import LookalikeServicer
from lookalike_gateway.ingest_types import CREATED, FAILED, SKIPPED, UNCHANGED

from .gateway_fakes import GatedSearch, make_gateway, png, upsert_streams_ended, wait_for_stream_end


def serve(gateway, keys=frozenset(), draining=None):
    server = grpc.server(futures.ThreadPoolExecutor(8))
    lookalike_pb2_grpc.add_LookalikeServicer_to_server(LookalikeServicer(gateway, ApiKeyCheck(keys), draining),
                                                       server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return server, channel, lookalike_pb2_grpc.LookalikeStub(channel)


@pytest.fixture
def served(tmp_path):
    gateway = make_gateway(tmp_path, upsert_batch_size=2)
    server, channel, stub = serve(gateway)
    yield gateway, stub
    channel.close()
    server.stop(0)


def upsert(pid: str, image: bytes, skip_duplicates: bool = False) -> lookalike_pb2.UpsertProductsRequest:
    return lookalike_pb2.UpsertProductsRequest(product=types_pb2.Product(id=pid, title=pid), image=image,
                                               skip_duplicates=skip_duplicates)


def test_upsert_acknowledges_each_item_in_order_and_a_bad_one_fails_alone(served):
    gateway, stub = served
    requests = [upsert("a", png(1)), upsert("bad", b"not an image"), upsert("b", png(2)),
                upsert("copy", png(1), skip_duplicates=True), upsert("", png(3))]
    answers = list(stub.UpsertProducts(iter(requests), timeout=60))
    assert [(a.product_id, a.outcome) for a in answers] == [("a", CREATED), ("bad", FAILED), ("b", CREATED),
                                                            ("copy", SKIPPED), ("", FAILED)]
    assert "image" in answers[1].error and "product id" in answers[4].error
    assert answers[3].duplicate_of == "a" and answers[3].exact_duplicate
    again = list(stub.UpsertProducts(iter([upsert("a", png(1))]), timeout=60))
    assert again[0].outcome == UNCHANGED
    assert sorted(gateway.search.stub.collections["products__lookalike-lite0"]) == ["a", "b"]


def test_errors_carry_the_status_code_and_details(served):
    _, stub = served
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetProduct(lookalike_pb2.GetProductRequest(product_id="nope"), timeout=30)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in missing.value.details()
    assert any(key == "grpc-status-details-bin" for key, _ in missing.value.trailing_metadata())
    with pytest.raises(grpc.RpcError) as bad:
        stub.SearchByImage(lookalike_pb2.SearchByImageRequest(image=png(1), top_k=100_000), timeout=30)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in bad.value.details()


def test_a_key_is_required_once_keys_are_configured(tmp_path):
    server, channel, stub = serve(make_gateway(tmp_path), keys=frozenset({"k1"}))
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.GetProduct(lookalike_pb2.GetProductRequest(product_id="p"), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            stub.GetProduct(lookalike_pb2.GetProductRequest(product_id="p"), timeout=30,
                            metadata=(("x-api-key", "k1"),))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # past the key check
    finally:
        channel.close()
        server.stop(0)


def test_a_caller_that_goes_away_gets_nothing_more_stored(tmp_path):
    """The first batch is stored; later writes are held until the caller has cancelled, then fail: the
    stream ends in the gateway with only the first batch stored (no timing assumption)."""
    search = GatedSearch()
    gateway = make_gateway(tmp_path, search=search, upsert_batch_size=2)
    server, channel, stub = serve(gateway)
    before = upsert_streams_ended()
    try:
        call = stub.UpsertProducts(iter([upsert(f"p{i}", png(400 + i)) for i in range(8)]), timeout=120)
        first = next(call)
        assert first.outcome == CREATED and search.first_stored.is_set()
        call.cancel()
        search.release.set()  # every later write fails, whenever the gateway gets to it
        wait_for_stream_end(before)
        assert sorted(search.collections["products__lookalike-lite0"]) == ["p0", "p1"]
    finally:
        search.release.set()
        channel.close()
        server.stop(0)


def requests_counted(method: str, status: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("lookalike_gateway_requests_total",
                                     {"api": "grpc", "method": method, "status": status}) or 0.0


def test_an_unexpected_failure_answers_and_counts_unknown_not_ok(served, monkeypatch):
    """A bug (not an ApiError) ends the call UNKNOWN, and the request metric says UNKNOWN, not OK."""
    gateway, stub = served

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(gateway, "get_product", broken)
    monkeypatch.setattr(gateway, "ingest", broken)
    methods = ("GetProduct", "UpsertProducts")
    before = {m: (requests_counted(m, "UNKNOWN"), requests_counted(m, "OK")) for m in methods}
    with pytest.raises(grpc.RpcError) as unary:
        stub.GetProduct(lookalike_pb2.GetProductRequest(product_id="p"), timeout=30)
    with pytest.raises(grpc.RpcError) as stream:
        list(stub.UpsertProducts(iter([upsert("p", png(1))]), timeout=30))
    assert unary.value.code() == stream.value.code() == grpc.StatusCode.UNKNOWN
    for method, (unknown, ok) in before.items():  # counted before gRPC sent the status the client saw
        assert (requests_counted(method, "UNKNOWN"), requests_counted(method, "OK")) == (unknown + 1, ok), method


def test_a_draining_gateway_starts_no_new_call_not_even_long_work(tmp_path):
    """After SIGTERM (draining set) a new unary call, UpsertProducts stream or Reindex stream gets UNAVAILABLE
    "shutting down" at once, so the caller retries on another replica; nothing is written."""
    gateway = make_gateway(tmp_path)
    draining = threading.Event()
    server, channel, stub = serve(gateway, draining=draining)
    try:
        draining.set()
        calls = {
            "GetProduct": lambda: stub.GetProduct(lookalike_pb2.GetProductRequest(product_id="p"), timeout=30),
            "UpsertProducts": lambda: list(stub.UpsertProducts(iter([upsert("p", png(1))]), timeout=30)),
            "Reindex": lambda: list(stub.Reindex(lookalike_pb2.ReindexRequest(), timeout=30)),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, name
            assert "shutting down" in refused.value.details(), name
        assert "p" not in gateway.search.stub.collections.get("products__lookalike-lite0", {})
    finally:
        channel.close()
        server.stop(0)
