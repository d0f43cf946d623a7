"""Search-service observability: request ids from gRPC metadata in the logs, Prometheus metrics by RPC and
status, the metrics HTTP endpoint (loopback, off by default). In-process gRPC server over a fake store."""
from __future__ import annotations

import json
import logging
import urllib.request

import grpc
import numpy as np
import pytest

from lookalike.grpc_server import JsonFormatter, ServiceHost
from lookalike.request_id import RequestIdFilter
from lookalike.search.v1 import search_pb2, search_pb2_grpc
from lookalike.vectors import pack
from lookalike_search.observability import REQUESTS, ObservabilityInterceptor, start_metrics_server
from lookalike_search.servicer import SERVICE_NAME, SearchServicer
from lookalike_search.settings import SearchSettings
from lookalike_search.store import Hit


class Store:
    def search(self, vector, top_k, flt=None):
        return [Hit("p1", 0.9, {"title": "one"})]


class Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[dict] = []
        self.addFilter(RequestIdFilter())
        self.setFormatter(JsonFormatter())

    def emit(self, record):
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def search_stub():
    host = ServiceHost("127.0.0.1:0", max_workers=2, grace=0.5,
                       interceptors=[ObservabilityInterceptor((SERVICE_NAME,))])
    host.add(search_pb2_grpc.add_SearchServiceServicer_to_server, SearchServicer(Store(), 4), SERVICE_NAME)
    port = host.start()
    host.set_serving(True)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield search_pb2_grpc.SearchServiceStub(channel)
    host.stop()


def sample(name: str, **labels) -> float:
    from prometheus_client import REGISTRY
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_request_id_from_metadata_is_logged_and_calls_are_counted(search_stub):
    capture = Capture()
    access = logging.getLogger("lookalike_search.access")
    access.addHandler(capture)
    access.setLevel(logging.INFO)
    ok_before = sample("lookalike_search_requests_total", method="SearchByVector", code="OK")
    bad_before = sample("lookalike_search_requests_total", method="SearchByVector", code="INVALID_ARGUMENT")
    try:
        vector = pack(np.ones(4, dtype=np.float32) / 2)
        response = search_stub.SearchByVector(search_pb2.SearchByVectorRequest(vector=vector, top_k=1), timeout=5,
                                              metadata=[("x-request-id", "test-abc")])
        assert response.results[0].product.id == "p1"
        with pytest.raises(grpc.RpcError) as err:
            search_stub.SearchByVector(search_pb2.SearchByVectorRequest(vector=b"", top_k=1), timeout=5,
                                       metadata=[("x-request-id", "test-bad")])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        access.removeHandler(capture)
    by_id = {line["request_id"]: line["msg"] for line in capture.lines}
    assert by_id["test-abc"].startswith("SearchByVector OK")
    assert by_id["test-bad"].startswith("SearchByVector INVALID_ARGUMENT")
    assert sample("lookalike_search_requests_total", method="SearchByVector", code="OK") == ok_before + 1
    assert sample("lookalike_search_requests_total", method="SearchByVector",
                  code="INVALID_ARGUMENT") == bad_before + 1
    assert sample("lookalike_search_request_seconds_count", method="SearchByVector") >= 2


def test_metrics_endpoint_serves_the_counters_on_loopback():
    REQUESTS.labels(method="Probe", code="OK").inc()
    port = start_metrics_server(0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'lookalike_search_requests_total{code="OK",method="Probe"}' in text
    assert "lookalike_search_request_seconds_bucket" in text


def test_metrics_are_off_and_loopback_by_default(monkeypatch):
    for var in ("LOOKALIKE_SEARCH_METRICS_PORT", "LOOKALIKE_SEARCH_METRICS_HOST"):
        monkeypatch.delenv(var, raising=False)
    settings = SearchSettings()
    assert settings.metrics_port == 0 and settings.metrics_host == "127.0.0.1"
