"""The embedder seen from the gateway's /metrics.

* `InFlightInterceptor` (on the embedder's gRPC channel): `lookalike_gateway_embedder_queue_depth`
  = Predictions RPCs (one per image) sent and not answered yet, whoever sent them (query embeddings,
  ingest bursts, reindex, model probes), since every EmbedderClient of the gateway shares that channel.
* `TorchServeMetrics` (a collector in the default registry, with LOOKALIKE_GATEWAY_EMBEDDER_METRICS_URL
  set): each /metrics request reads TorchServe's Prometheus metrics API (loopback only, so this fits a
  single-machine stack or a sidecar in the embedder's network namespace) and re-exports its batch-size
  and queue metrics under `lookalike_embedder_*` names, labels unchanged:

  =========================================  ==============================================================
  re-exported as                             TorchServe 0.12 metric
  =========================================  ==============================================================
  lookalike_embedder_batch_size (histogram)  lookalike_embedder_batch_size: requests per handler batch
  lookalike_embedder_queue_time_ms (gauge)   QueueTime: ms the latest job waited in the model's queue
  lookalike_embedder_queue_latency_          ts_queue_latency_microseconds: total queue wait (REST
  microseconds_total (counter)               requests only in 0.12; gRPC jobs update QueueTime only)
  lookalike_embedder_requests_total          ts_inference_requests_total: inference requests received
  (counter)                                  (gRPC and REST)
  =========================================  ==============================================================

  A failed read (TorchServe down, slow, garbage) leaves these out of that scrape and counts
  `lookalike_gateway_embedder_metrics_scrapes_total{outcome="error"}`; /metrics itself never fails.
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator

import grpc
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import REGISTRY, CollectorRegistry

from lookalike_embedder.contract import BATCH_SIZE_METRIC  # a leaf: no torch

from . import metrics

log = logging.getLogger(__name__)

#: Method of TorchServe's gRPC inference API that embeds one image.
PREDICTIONS_METHOD = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
#: Seconds one read of TorchServe's metrics API may take (it runs inside a /metrics request).
SCRAPE_TIMEOUT_S = 1.0
#: Largest metrics page read (TorchServe's is a few KiB).
MAX_BODY_BYTES = 1 << 20
#: TorchServe family (as prometheus_client's parser names it: counters without "_total") ->
#: (name on the gateway, type, help).
REEXPORTED: dict[str, tuple[str, str, str]] = {
    BATCH_SIZE_METRIC: (
        BATCH_SIZE_METRIC, "histogram",
        "Requests per batch the embedder's handler ran (TorchServe; rejected images included)"),
    "QueueTime": (
        "lookalike_embedder_queue_time_ms", "gauge",
        "Milliseconds the latest job waited in TorchServe's model queue (TorchServe QueueTime)"),
    "ts_queue_latency_microseconds": (
        "lookalike_embedder_queue_latency_microseconds", "counter",
        "Total microseconds inference jobs waited in TorchServe's queue (ts_queue_latency_microseconds; "
        "REST requests only in TorchServe 0.12)"),
    "ts_inference_requests": (
        "lookalike_embedder_requests", "counter",
        "Inference requests TorchServe received (ts_inference_requests_total)"),
}


# ---- in-flight gauge --------------------------------------------------------------------------------

class InFlightInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Counts Predictions RPCs in flight in `gauge` (+1 when sent, -1 once answered, failed or timed
    out), for blocking calls and futures alike. Other methods (Ping) pass through uncounted."""

    def __init__(self, gauge=None, method: str = PREDICTIONS_METHOD):
        self.gauge = gauge if gauge is not None else metrics.EMBEDDER_QUEUE_DEPTH
        self.method = method

    def intercept_unary_unary(self, continuation, client_call_details, request):
        method = client_call_details.method
        if isinstance(method, bytes):
            method = method.decode("ascii", "replace")
        if method != self.method:
            return continuation(client_call_details, request)
        self.gauge.inc()
        try:
            call = continuation(client_call_details, request)
        except BaseException:
            self.gauge.dec()
            raise
        once = threading.Lock()  # the decrement happens exactly once

        def done(_call=None) -> None:
            if once.acquire(blocking=False):
                self.gauge.dec()

        try:
            call.add_done_callback(done)  # runs at once if the call is already over (blocking calls)
        except Exception:  # an outcome that is not a future: it is over
            done()
        return call


# ---- re-export of TorchServe's metrics ---------------------------------------------------------------

def check_metrics_url(url: str) -> str:
    """`url` if it is an http URL of a loopback host (TorchServe's metrics never leave loopback), else
    ValueError. Empty = off."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("must be an http:// URL such as http://127.0.0.1:8082/metrics (or empty: off)")
    host = parts.hostname
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"must name a loopback host (127.0.0.1, ::1, localhost), not {host!r}: TorchServe's "
                             "metrics API is never exposed beyond loopback")
    return url


def metrics_page_url(url: str) -> str:
    """TorchServe's base metrics address (http://127.0.0.1:8082) or the page itself -> the page URL."""
    parts = urllib.parse.urlsplit(url)
    return url if parts.path not in ("", "/") else urllib.parse.urlunsplit(parts._replace(path="/metrics"))


def reexport(text: str) -> list[Metric]:
    """The REEXPORTED families of a TorchServe metrics page, renamed (a family of another type than
    expected is left out); ValueError for a page that does not parse."""
    out = []
    for family in text_string_to_metric_families(text):
        name = family.name.removesuffix("_total") if family.type == "counter" else family.name
        if name not in REEXPORTED or REEXPORTED[name][1] != family.type:
            continue
        new_name, kind, doc = REEXPORTED[name]
        metric = Metric(new_name, doc, kind)
        for sample in family.samples:
            if kind == "histogram":
                suffix = sample.name[len(family.name):]
                if suffix not in ("_bucket", "_count", "_sum"):
                    continue
            else:
                suffix = "_total" if kind == "counter" else ""
            metric.add_sample(new_name + suffix, dict(sample.labels), sample.value)
        out.append(metric)
    return out


class TorchServeMetrics:
    """A prometheus_client collector: reads `url` (TorchServe's metrics API) on every collect and
    yields `reexport` of it; on any failure nothing, counted in EMBEDDER_METRICS_SCRAPES."""

    def __init__(self, url: str, timeout: float = SCRAPE_TIMEOUT_S):
        self.url = metrics_page_url(check_metrics_url(url))
        self.timeout = timeout
        self._failing = False

    def describe(self) -> list:
        return []  # no read at registration; names are not checked for clashes (they have their own prefix)

    def fetch(self) -> str:
        request = urllib.request.Request(self.url, headers={"Accept": "text/plain"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            body = response.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise ValueError(f"metrics page larger than {MAX_BODY_BYTES} bytes")
        return body.decode("utf-8")

    def collect(self) -> Iterator[Metric]:
        try:
            families = reexport(self.fetch())
        except Exception as exc:  # never break /metrics
            metrics.EMBEDDER_METRICS_SCRAPES.labels(outcome="error").inc()
            if not self._failing:
                log.warning("cannot read the embedder's metrics at %s: %s", self.url, exc)
            self._failing = True
            return iter(())
        metrics.EMBEDDER_METRICS_SCRAPES.labels(outcome="ok").inc()
        if self._failing:
            log.info("reading the embedder's metrics at %s again", self.url)
        self._failing = False
        return iter(families)


_installed: dict[int, TorchServeMetrics] = {}
_install_lock = threading.Lock()


def install(url: str, registry: CollectorRegistry = REGISTRY) -> TorchServeMetrics | None:
    """Registers a TorchServeMetrics for `url` in `registry` (replacing one installed before); empty
    url: removes it. Returns the collector (None when off)."""
    with _install_lock:
        previous = _installed.pop(id(registry), None)
        if previous is not None:
            registry.unregister(previous)
        if not url:
            return None
        collector = TorchServeMetrics(url)
        registry.register(collector)
        _installed[id(registry)] = collector
        return collector


__all__ = ["InFlightInterceptor", "TorchServeMetrics", "check_metrics_url", "install",
                          "metrics_page_url", "reexport", "PREDICTIONS_METHOD", "REEXPORTED"]
