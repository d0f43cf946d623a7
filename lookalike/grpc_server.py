"""Common gRPC server plumbing: health service, reflection, graceful drain on SIGTERM."""
from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lookalike.grpc_channel import server_options
from lookalike.limits import MAX_GRPC_MESSAGE_BYTES
from lookalike.request_id import RequestIdFilter

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServiceHost:
    """One grpc.Server with health and reflection; services register with `add`.

    Health starts NOT_SERVING; call `set_serving(True)` once the service is ready. `stop` (also on
    SIGTERM/SIGINT via `install_signal_handlers`) reports NOT_SERVING, drains in-flight calls for up to
    `grace` seconds and stops.
    """

    def __init__(self, address: str, max_workers: int = 16, max_message_bytes: int = MAX_GRPC_MESSAGE_BYTES,
                 grace: float = 10.0, interceptors: Iterable[grpc.ServerInterceptor] = ()):
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                                  options=server_options(max_message_bytes), interceptors=list(interceptors))
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                          reflection.SERVICE_NAME]
        self.grace = grace
        self.address = address
        self.port = 0
        self._stopped = threading.Event()
        self.set_serving(False)

    def add(self, register: Callable[[object, grpc.Server], None], servicer: object, full_name: str) -> None:
        """Registers a servicer (`register` is the generated add_XServicer_to_server)."""
        register(servicer, self.server)
        self._service_names.append(full_name)

    def start(self) -> int:
        """Binds, enables reflection and starts; returns the bound port."""
        reflection.enable_server_reflection(self._service_names, self.server)
        self.port = self.server.add_insecure_port(self.address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {self.address}")
        self.server.start()
        log.info("gRPC listening on %s (port %d)", self.address, self.port)
        return self.port

    def set_serving(self, serving: bool) -> None:
        """Sets the overall and per-service health status."""
        status = SERVING if serving and not self._stopped.is_set() else NOT_SERVING
        self.health.set("", status)
        for name in self._service_names[2:]:  # the registered services, not health/reflection
            self.health.set(name, status)

    def stop(self) -> None:
        """Reports NOT_SERVING, drains in-flight calls (up to `grace` s) and stops."""
        if self._stopped.is_set():
            return
        self.set_serving(False)
        self._stopped.set()
        log.info("draining gRPC server (grace %.1fs)", self.grace)
        self.server.stop(self.grace).wait()

    def install_signal_handlers(self, on_stop: Callable[[], None] | None = None) -> None:
        """Stops gracefully on SIGTERM and SIGINT (in a thread: signal handlers must return fast)."""
        def handle(signum, _frame):
            log.info("signal %d: shutting down", signum)
            def run():
                self.stop()
                if on_stop:
                    on_stop()
            threading.Thread(target=run, daemon=True).start()
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def wait(self) -> None:
        """Blocks until the server stopped."""
        self.server.wait_for_termination()


def configure_logging(level: str = "INFO") -> None:
    """One JSON object per line on stderr, with the current request id."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, request_id, msg (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "request_id": getattr(record, "request_id", "-"), "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)
