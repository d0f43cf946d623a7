"""The search service's process: hosts SearchServicer (lookalike_search.servicer) on a
lookalike.grpc_server.ServiceHost, opens the collection registry (retrying while a Qdrant server starts),
then reports SERVING and writes the port file; runs until SIGTERM/SIGINT. `python -m lookalike_search`."""
from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from lookalike import atomic
from lookalike.grpc_server import ServiceHost, configure_logging
from lookalike.search.v1 import search_pb2_grpc
from lookalike.settings import ConfigError, load_settings

from .observability import ObservabilityInterceptor, start_metrics_server
from .registry import CollectionRegistry
from .servicer import SERVICE_NAME, SearchServicer
from .settings import SearchSettings
from .store import CollectionMismatch, StoreError

log = logging.getLogger("lookalike_search")


def write_port_file(path: Path, port: int) -> None:
    """Writes "<port>\n" atomically (a reader sees no port or the whole one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, f"{port}\n", fsync_dir=False)


def open_until_ready(registry: CollectionRegistry, stopping: threading.Event) -> bool:
    """Opens the registry, retrying transient failures (a Qdrant server still starting) until stopped.

    Returns False when stopped first; raises for permanent failures (e.g. a vector-size mismatch)."""
    delay = 0.5
    while not stopping.is_set():
        try:
            registry.open()
            return True
        except CollectionMismatch:
            raise
        except StoreError as exc:
            if not exc.unavailable:
                raise
            log.warning("vector store not ready (%s); retrying in %.1fs", exc, delay)
            stopping.wait(delay)
            delay = min(delay * 2, 10.0)
    return False


def serve(settings: SearchSettings) -> int:
    """Runs the service until SIGTERM/SIGINT; returns the exit status."""
    registry = CollectionRegistry.from_settings(settings)
    host = ServiceHost(settings.bind_address, max_workers=settings.max_workers, grace=settings.shutdown_grace_s,
                       interceptors=[ObservabilityInterceptor((SERVICE_NAME,), access_log=settings.access_log)])
    if settings.metrics_port:
        try:
            start_metrics_server(settings.metrics_port, settings.metrics_host)
        except OSError as exc:
            print(f"search service cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {exc}",
                  file=sys.stderr)
            registry.close()
            return 1
    host.add(search_pb2_grpc.add_SearchServiceServicer_to_server, SearchServicer(registry), SERVICE_NAME)
    stopping = threading.Event()
    host.install_signal_handlers(on_stop=stopping.set)
    try:
        port = host.start()
    except (OSError, RuntimeError) as exc:
        print(f"search service cannot listen on {settings.bind_address}: {exc}", file=sys.stderr)
        registry.close()
        return 1
    log.info("search service starting on %s:%d (engine %s, collection %r, vector size %d)",
             settings.host, port, settings.engine, settings.collection, settings.vector_size)
    try:
        ready = open_until_ready(registry, stopping)
    except StoreError as exc:
        log.error("vector store failed to start: %s", exc)
        print(f"search service: vector store failed to start: {exc}", file=sys.stderr)
        host.stop()
        registry.close()
        return 1
    if ready and not stopping.is_set():
        host.set_serving(True)
        if settings.port_file:
            write_port_file(settings.port_file, port)
        log.info("search service ready on %s:%d", settings.host, port)
    host.wait()
    registry.close()
    log.info("search service stopped")
    return 0


def main() -> int:
    try:
        settings = load_settings(SearchSettings)
    except ConfigError:
        return 2  # load_settings printed the message naming the setting
    configure_logging(settings.log_level)
    try:
        return serve(settings)
    except StoreError as exc:
        print(f"search service: {exc}", file=sys.stderr)
        return 1
