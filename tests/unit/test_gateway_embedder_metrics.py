"""The embedder as the gateway's /metrics shows it: requests in flight (a gRPC interceptor, against an
in-process fake of TorchServe that holds requests until told), images per ingest burst, and the re-export
of TorchServe's metrics page (renamed families; a failed read never breaks /metrics and is counted)."""
from __future__ import annotations

import http.server
import json
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from lookalike.embedder_client import EmbedderClient, EmbedderImageError
from lookalike.torchserve_api import inference_pb2, inference_pb2_grpc
from lookalike.vectors import pack
from lookalike_gateway import embedder_metrics, metrics
from lookalike_gateway.embedder_metrics import InFlightInterceptor, TorchServeMetrics, reexport
from lookalike_gateway.server import build_gateway
from lookalike_gateway.settings import GatewaySettings

from .gateway_fakes import ingest, make_gateway, png

TOKEN = "s3cret"

# What TorchServe 0.12 served (metrics_mode=prometheus, services/embedder/metrics.yaml) after a burst of 13
# gRPC requests and one REST request (abridged: the other families are not re-exported).
TORCHSERVE_PAGE = """\
# HELP ts_inference_requests_total Torchserve prometheus counter metric with unit: Count
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{model_name="lookalike-lite0",model_version="default",hostname="vm",} 14.0
# HELP ts_queue_latency_microseconds Torchserve prometheus counter metric with unit: Microseconds
# TYPE ts_queue_latency_microseconds counter
ts_queue_latency_microseconds{model_name="lookalike-lite0",model_version="default",hostname="vm",} 5322.615
# HELP ts_inference_latency_microseconds Torchserve prometheus counter metric with unit: Microseconds
# TYPE ts_inference_latency_microseconds counter
ts_inference_latency_microseconds{model_name="lookalike-lite0",model_version="default",hostname="vm",} 42385.418
# HELP lookalike_embedder_batch_size Torchserve prometheus histogram metric with unit: count
# TYPE lookalike_embedder_batch_size histogram
lookalike_embedder_batch_size_bucket{ModelName="lookalike-lite0",Level="Model",Hostname="vm",le="0.005",} 0.0
lookalike_embedder_batch_size_bucket{ModelName="lookalike-lite0",Level="Model",Hostname="vm",le="1.0",} 1.0
lookalike_embedder_batch_size_bucket{ModelName="lookalike-lite0",Level="Model",Hostname="vm",le="10.0",} 1.0
lookalike_embedder_batch_size_bucket{ModelName="lookalike-lite0",Level="Model",Hostname="vm",le="+Inf",} 2.0
lookalike_embedder_batch_size_count{ModelName="lookalike-lite0",Level="Model",Hostname="vm",} 2.0
lookalike_embedder_batch_size_sum{ModelName="lookalike-lite0",Level="Model",Hostname="vm",} 14.0
# HELP MemoryUsed Torchserve prometheus gauge metric with unit: Megabytes
# TYPE MemoryUsed gauge
# HELP QueueTime Torchserve prometheus gauge metric with unit: Milliseconds
# TYPE QueueTime gauge
QueueTime{Level="Host",Hostname="vm",} 5.0
# HELP WorkerThreadTime Torchserve prometheus gauge metric with unit: Milliseconds
# TYPE WorkerThreadTime gauge
WorkerThreadTime{Level="Host",Hostname="vm",} 2.0
"""


def sample(name: str, labels: dict | None = None, registry=REGISTRY) -> float:
    return registry.get_sample_value(name, labels or {}) or 0.0


# ---- requests in flight ---------------------------------------------------------------------------------

class HeldTorchServe(inference_pb2_grpc.InferenceAPIsServiceServicer):
    """Answers Predictions only once `release` is set (b"bad": the per-item error document)."""

    def __init__(self):
        self.release = threading.Event()
        self.arrived = 0
        self.lock = threading.Lock()

    def Ping(self, request, context):
        return inference_pb2.TorchServeHealthResponse(health=json.dumps({"status": "Healthy"}))

    def Predictions(self, request, context):
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "Token Authorization failed")
        with self.lock:
            self.arrived += 1
        self.release.wait(60)
        if request.input["data"] == b"bad":
            return inference_pb2.PredictionResponse(prediction=json.dumps(
                {"error": {"code": "INVALID_ARGUMENT", "reason": "not_an_image", "message": "no"}}).encode())
        v = np.ones(8, np.float32) / np.sqrt(8)
        return inference_pb2.PredictionResponse(prediction=pack(v))


@pytest.fixture()
def held():
    servicer = HeldTorchServe()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    servicer.release.set()
    server.stop(0)


class InFlight:
    """A gauge in a registry of its own."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.gauge = Gauge("test_in_flight", "in flight", registry=self.registry)

    def interceptor(self) -> InFlightInterceptor:
        return InFlightInterceptor(self.gauge)

    @property
    def value(self) -> float:
        return self.registry.get_sample_value("test_in_flight")


@pytest.fixture()
def gauge():
    return InFlight()


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_embed_many_counts_every_request_until_answered(held, gauge):
    servicer, target = held
    client = EmbedderClient(target, TOKEN, interceptors=[gauge.interceptor()])
    images = [b"a", b"b", b"bad", b"c", b"d"]
    done = futures.ThreadPoolExecutor(1).submit(client.embed_many, images, 10)
    wait_for(lambda: servicer.arrived == 5)
    assert gauge.value == 5  # all five sent, none answered
    servicer.release.set()
    results = done.result(10)
    assert isinstance(results[2], EmbedderImageError) and results[0].shape == (8,)
    wait_for(lambda: gauge.value == 0)
    client.close()


def test_blocking_embed_timeouts_errors_and_ping(held, gauge):
    servicer, target = held
    client = EmbedderClient(target, TOKEN, interceptors=[gauge.interceptor()])
    pool = futures.ThreadPoolExecutor(2)
    one = pool.submit(client.embed, b"a", 10)
    wait_for(lambda: servicer.arrived == 1)
    assert gauge.value == 1
    # Held past its 0.3 s deadline whether or not it reached the servicer in time (no wait for its arrival: on
    # a loaded machine the deadline can pass first, and a count of 2 seen after arrival could already be 1).
    expired = pool.submit(client.embed, b"b", 0.3)
    with pytest.raises(grpc.RpcError) as info:
        expired.result(10)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert gauge.value == 1  # the expired call no longer counts
    assert client.ping() is True and gauge.value == 1  # Ping is not an embed request
    servicer.release.set()
    assert one.result(10).shape == (8,)
    assert gauge.value == 0
    anonymous = EmbedderClient(target, "wrong", interceptors=[gauge.interceptor()])
    with pytest.raises(grpc.RpcError):
        anonymous.embed(b"a", timeout=5)
    assert gauge.value == 0
    unreachable = EmbedderClient("127.0.0.1:9", TOKEN, interceptors=[gauge.interceptor()])
    assert isinstance(unreachable.embed_many([b"a", b"b"], timeout=2)[0], grpc.RpcError)
    assert gauge.value == 0
    for c in (client, anonymous, unreachable):
        c.close()


def test_the_gateway_counts_its_embedder_channel(held, tmp_path):
    """build_gateway puts the interceptor on the embedder channel, which the catalogue's per-model
    clients share: both count in lookalike_gateway_embedder_queue_depth."""
    servicer, target = held
    settings = GatewaySettings(embedder_address=target, embedder_token=TOKEN, redis_url="", data_dir=tmp_path,
                               search_address="127.0.0.1:9")
    gateway = build_gateway(settings)
    base = sample("lookalike_gateway_embedder_queue_depth")
    other = EmbedderClient(gateway.embedder.target, token=TOKEN, model_name="lookalike-lite0",
                           model_version="2", channel=gateway.embedder.channel)  # as catalogue._model does
    pool = futures.ThreadPoolExecutor(4)
    calls = [pool.submit(gateway.embedder.embed, b"a", 10), pool.submit(other.embed_many, [b"b", b"c"], 10)]
    wait_for(lambda: servicer.arrived == 3)
    assert sample("lookalike_gateway_embedder_queue_depth") == base + 3
    servicer.release.set()
    for call in calls:
        call.result(10)
    wait_for(lambda: sample("lookalike_gateway_embedder_queue_depth") == base)
    gateway.embedder.close()


# ---- images per ingest burst ----------------------------------------------------------------------------

def test_each_ingest_burst_is_one_batch_size_observation(tmp_path):
    from lookalike.v1 import types_pb2

    gateway = make_gateway(tmp_path, upsert_batch_size=4)
    count, total = (sample("lookalike_gateway_embedder_batch_size_count"),
                    sample("lookalike_gateway_embedder_batch_size_sum"))
    items = [(types_pb2.Product(id=f"p{i}", title="t"), png(i)) for i in range(10)]
    results = ingest(gateway, items)
    assert len(results) == 10 and all(r.ok for r in results)
    assert sample("lookalike_gateway_embedder_batch_size_sum") - total == 10  # every image sent once
    assert sample("lookalike_gateway_embedder_batch_size_count") - count == 3  # bursts of 4, 4 and 2
    assert sample("lookalike_gateway_embedder_batch_size_bucket", {"le": "4.0"}) >= 3
    again = ingest(gateway, items)  # unchanged: nothing embedded
    assert len(again) == 10 and sample("lookalike_gateway_embedder_batch_size_count") - count == 3


# ---- re-export of TorchServe's metrics ------------------------------------------------------------------

def test_reexport_renames_the_batch_size_and_queue_families():
    families = {f.name: f for f in reexport(TORCHSERVE_PAGE)}
    assert set(families) == {"lookalike_embedder_batch_size", "lookalike_embedder_queue_time_ms",
                             "lookalike_embedder_queue_latency_microseconds", "lookalike_embedder_requests"}
    registry = CollectorRegistry()

    class Static:
        def collect(self):
            return reexport(TORCHSERVE_PAGE)

    registry.register(Static())
    text = generate_latest(registry).decode()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}  # what Prometheus would read
    assert parsed["lookalike_embedder_batch_size"].type == "histogram"
    labels = {"ModelName": "lookalike-lite0", "Level": "Model", "Hostname": "vm"}
    assert registry.get_sample_value("lookalike_embedder_batch_size_count", labels) == 2
    assert registry.get_sample_value("lookalike_embedder_batch_size_sum", labels) == 14
    assert registry.get_sample_value("lookalike_embedder_batch_size_bucket", {**labels, "le": "+Inf"}) == 2
    assert registry.get_sample_value("lookalike_embedder_queue_time_ms", {"Level": "Host", "Hostname": "vm"}) == 5
    ts_labels = {"model_name": "lookalike-lite0", "model_version": "default", "hostname": "vm"}
    assert registry.get_sample_value("lookalike_embedder_queue_latency_microseconds_total", ts_labels) == 5322.615
    assert registry.get_sample_value("lookalike_embedder_requests_total", ts_labels) == 14
    assert "# TYPE lookalike_embedder_queue_latency_microseconds_total counter" in text
    assert "WorkerThreadTime" not in text and "ts_inference_latency" not in text


class _Page(http.server.BaseHTTPRequestHandler):
    body, status, delay = TORCHSERVE_PAGE.encode(), 200, 0.0

    def do_GET(self):
        time.sleep(self.delay)
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def page():
    handler = type("Page", (_Page,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_collector_reads_the_page_on_every_scrape_and_survives_failures(page):
    handler, base = page
    registry = CollectorRegistry()
    collector = embedder_metrics.install(base, registry)  # base address: /metrics is appended
    assert collector.url == base + "/metrics"
    collector.timeout = 10.0  # generous: a loaded machine must not turn a good scrape into an error
    labels = {"ModelName": "lookalike-lite0", "Level": "Model", "Hostname": "vm"}
    ok, errors = (sample("lookalike_gateway_embedder_metrics_scrapes_total", {"outcome": o}) for o in ("ok", "error"))
    assert registry.get_sample_value("lookalike_embedder_batch_size_count", labels) == 2
    count_line = 'lookalike_embedder_batch_size_count{ModelName="lookalike-lite0",Level="Model",Hostname="vm",} '
    handler.body = TORCHSERVE_PAGE.replace(count_line + "2.0", count_line + "7.0").encode()
    assert registry.get_sample_value("lookalike_embedder_batch_size_count", labels) == 7  # read again
    for attribute, value in [("status", 500), ("body", b"<html>not prometheus{{{</html>"), ("delay", 0.8)]:
        saved = getattr(handler, attribute)
        setattr(handler, attribute, value)
        collector.timeout = 0.3 if attribute == "delay" else 10.0  # the page answers after 0.8 s: too late
        text = generate_latest(registry).decode()  # never raises
        assert "lookalike_embedder_" not in text
        setattr(handler, attribute, saved)
    collector.timeout = 10.0
    assert sample("lookalike_gateway_embedder_metrics_scrapes_total", {"outcome": "error"}) - errors == 3
    assert sample("lookalike_gateway_embedder_metrics_scrapes_total", {"outcome": "ok"}) - ok == 2
    assert "lookalike_embedder_batch_size_count" in generate_latest(registry).decode()  # back
    assert embedder_metrics.install("", registry) is None  # off again: nothing read
    assert "lookalike_embedder_" not in generate_latest(registry).decode()


def test_collector_with_nothing_listening_is_a_counted_error():
    registry = CollectorRegistry()
    registry.register(TorchServeMetrics("http://127.0.0.1:9/metrics", timeout=0.5))
    errors = sample("lookalike_gateway_embedder_metrics_scrapes_total", {"outcome": "error"})
    assert b"lookalike_embedder_" not in generate_latest(registry)
    assert sample("lookalike_gateway_embedder_metrics_scrapes_total", {"outcome": "error"}) == errors + 1


@pytest.mark.parametrize("url", ["http://127.0.0.1:8082/metrics", "http://localhost:8082", "http://[::1]:8082/",
                                 ""])
def test_metrics_url_setting_accepts_loopback(url):
    assert GatewaySettings(embedder_metrics_url=url).embedder_metrics_url == url


@pytest.mark.parametrize("url", ["http://10.0.0.5:8082/metrics", "http://embedder:8082/metrics",
                                 "https://127.0.0.1:8082/metrics", "127.0.0.1:8082", "file:///etc/passwd"])
def test_metrics_url_setting_refuses_anything_but_loopback_http(url):
    with pytest.raises(ValidationError):
        GatewaySettings(embedder_metrics_url=url)
