"""Runs the gateway: gRPC API and REST proxy in one process, health tracking the whole chain."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import uvicorn

from lookalike import atomic, naming
from lookalike.grpc_server import ServiceHost, configure_logging
from lookalike.settings import load_settings
from lookalike.grpc_channel import service_channel_options
from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc

from . import calibration, embedder_metrics, stack_metrics
from .auth import ApiKeyCheck, RateLimiter
from .adaptation_api import AdaptationService
from .classifier import ClassifierService
from .classifier_api import add_to_host as add_classification
from .collection_manager import embedder_client, embedding_cache
from .core import Dependencies, Gateway
from .grpc_api import LookalikeServicer
from .image_store import ImageStore
from .rest import create_app
from .settings import GatewaySettings

log = logging.getLogger("lookalike.gateway")
GRACE_S = 10.0  # how long SIGTERM waits for in-flight requests


class ReadinessMonitor(threading.Thread):
    """Probes the dependencies every `interval` seconds (`probe(timeout)`: Gateway.dependencies) and mirrors
    the result into gRPC health."""

    def __init__(self, probe: Callable[[float], Dependencies], host: ServiceHost, interval: float = 1.0,
                 stopping: threading.Event | None = None):
        super().__init__(daemon=True, name="readiness")
        self.probe = probe
        self.host = host
        self.interval = interval
        self.latest = Dependencies(embedder=False, search=False, cache=False)
        self.stopping = stopping or threading.Event()
        self._failures = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            self.refresh()
            self.stopping.wait(self.interval)

    def refresh(self) -> Dependencies:
        deps = self.probe(min(self.interval, 1.0))
        if self.latest.ready and not deps.ready and self._failures == 0:
            # One slow probe under load is not an outage: report it after the second in a row.
            self._failures = 1
            return self.latest
        self._failures = 0
        if deps != self.latest:
            log.info("dependencies: embedder=%s search=%s cache=%s", deps.embedder, deps.search, deps.cache)
        self.latest = deps
        self.host.set_serving(deps.ready and not self.stopping.is_set())
        return deps

    def snapshot(self) -> Dependencies:
        if self.stopping.is_set():
            return Dependencies(embedder=False, search=False, cache=False)
        return self.latest


def build_gateway(settings: GatewaySettings) -> Gateway:
    """Wires the embedder client, the search channel, the cache and the image store (and the embedder's
    metrics: requests in flight on the embedder channel, TorchServe's metrics re-exported when configured)."""
    embedder = embedder_client(settings, settings.embedder_model, settings.embedder_model_version,
                               interceptors=[embedder_metrics.InFlightInterceptor()])
    embedder_metrics.install(settings.embedder_metrics_url)
    stack_metrics.install(settings.stack_status_file)
    search_channel = grpc.insecure_channel(settings.search_address, options=service_channel_options())
    cache = embedding_cache(settings, naming.model_id(settings.embedder_model, settings.embedder_model_version))
    return Gateway(settings, embedder, search_channel, cache, ImageStore(settings.data_dir / "images"))


class _HttpServer(uvicorn.Server):
    """uvicorn without its own SIGTERM/SIGINT handling: by default it installs handlers for the whole
    of serve() that close the HTTP listener at once, before the gateway could report NOT_SERVING and
    drain both servers together; the gateway's handler sets should_exit itself."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _bind(host: str, port: int) -> socket.socket:
    """The REST listener. proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets, and
    without it every keep-alive response body waited ~40 ms for the client's delayed ACK of the headers
    (Nagle). TCP_NODELAY on the listener too (Linux copies it to accepted sockets)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def _write_port_file(path: Path, grpc_port: int, http_port: int) -> None:
    atomic.write_text(path, f"grpc={grpc_port}\nhttp={http_port}\n", fsync=False)


def main() -> None:
    settings = load_settings(GatewaySettings)
    configure_logging(settings.log_level)
    gateway = build_gateway(settings)
    auth = ApiKeyCheck(settings.api_key_set, RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst))

    host = ServiceHost(f"{settings.host}:{settings.grpc_port}",
                       max_message_bytes=max(settings.max_upload_bytes, settings.max_product_bytes) + 65536)
    draining = threading.Event()
    host.add(lookalike_pb2_grpc.add_LookalikeServicer_to_server, LookalikeServicer(gateway, auth, draining),
             lookalike_pb2.DESCRIPTOR.services_by_name["Lookalike"].full_name)
    gateway.classifier = ClassifierService(settings, gateway.search, gateway.collections, gateway.query_embedding,
                                           settings.data_dir / "classifiers")
    # lookalike adapt: StartAdaptation, POST /v1/adaptations
    gateway.adaptation = AdaptationService(gateway.search, gateway.collections)
    add_classification(host, gateway.classifier, auth, draining)  # lookalike.v1.Classification
    # "no close match", calibrated in the background
    weak_match = calibration.for_collections(gateway.collections, gateway.search, settings.weak_match_score)
    gateway.weak_match = weak_match.value
    try:
        grpc_port = host.start()
    except (OSError, RuntimeError) as exc:
        raise SystemExit(f"gateway: cannot listen for gRPC on {settings.host}:{settings.grpc_port} ({exc}); "
                         "set LOOKALIKE_GATEWAY_GRPC_PORT to a free port")
    try:
        http_socket = _bind(settings.host, settings.http_port)
    except OSError as exc:
        host.stop()
        raise SystemExit(f"gateway: cannot listen for HTTP on {settings.host}:{settings.http_port} "
                         f"({exc.strerror}); set LOOKALIKE_GATEWAY_HTTP_PORT to a free port")
    monitor = ReadinessMonitor(gateway.dependencies, host, stopping=draining)
    gateway.embedder_ready = lambda: monitor.latest.embedder
    monitor.start()
    weak_match.start()

    http_port = http_socket.getsockname()[1]
    app = create_app(gateway, auth, monitor.snapshot, draining=draining)
    server = _HttpServer(uvicorn.Config(app, log_level=settings.log_level.lower(), access_log=False,
                                        timeout_graceful_shutdown=GRACE_S, limit_concurrency=1024))

    def drain() -> None:
        # For shutdown_delay_s health says NOT_SERVING/503 and new API calls get UNAVAILABLE/503 (load
        # balancers notice); then both servers close their listeners and finish in-flight requests
        # (up to GRACE_S), and the process exits 0.
        time.sleep(settings.shutdown_delay_s)
        server.should_exit = True
        host.stop()

    drainer = threading.Thread(target=drain, daemon=True, name="drain")

    def shutdown(signum, _frame):
        log.info("signal %d: draining", signum)
        draining.set()
        host.set_serving(False)
        if drainer.ident is None:
            drainer.start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    if settings.port_file:
        _write_port_file(settings.port_file, grpc_port, http_port)
    log.info("gateway listening: grpc %s:%d, http http://%s:%d", settings.host, grpc_port, settings.host, http_port)
    asyncio.run(server.serve(sockets=[http_socket]))
    draining.set()
    if drainer.ident is not None:
        drainer.join(settings.shutdown_delay_s + host.grace + 5)  # host.stop() returns at once while it drains
    host.stop()
    weak_match.close()
    log.info("gateway stopped")
