"""Request ids, access log and Prometheus metrics for the search service.

`ObservabilityInterceptor` wraps every lookalike.search.v1.SearchService RPC: it takes the caller's request id
from gRPC metadata `x-request-id` (the gateway sends it) so every log line of the call carries it, logs
one access line per call (method, status, milliseconds), and records
`lookalike_search_requests_total{method,code}` and `lookalike_search_request_seconds{method}`.
`start_metrics_server` serves them over HTTP (`/metrics`) when LOOKALIKE_SEARCH_METRICS_PORT is set.
"""
from __future__ import annotations

import logging
import time

import grpc
from prometheus_client import Counter, Histogram, start_http_server

from lookalike import request_id

log = logging.getLogger("lookalike_search.access")

REQUESTS = Counter("lookalike_search_requests_total", "Search-service RPCs by method and status code",
                   ["method", "code"])
LATENCY = Histogram("lookalike_search_request_seconds", "Search-service RPC latency by method", ["method"],
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def _code_of(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    try:
        code = context.code()  # set by context.abort / set_code
    except (AttributeError, NotImplementedError):
        code = None
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class ObservabilityInterceptor(grpc.ServerInterceptor):
    """Request id + access log + metrics for the unary RPCs of the services named in `services`."""

    def __init__(self, services: tuple[str, ...], access_log: bool = True):
        self.prefixes = tuple(f"/{name}/" for name in services)
        self.access_log = access_log

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        path = handler_call_details.method or ""
        if handler is None or handler.unary_unary is None or not path.startswith(self.prefixes):
            return handler
        method = path.rsplit("/", 1)[-1]
        metadata = dict(handler_call_details.invocation_metadata or ())
        incoming_id = metadata.get(request_id.METADATA_KEY)
        inner = handler.unary_unary

        def observed(request, context):
            request_id.accept(incoming_id)  # runs in the worker thread that runs the RPC
            started = time.perf_counter()
            failed = False
            try:
                return inner(request, context)
            except BaseException:
                failed = True
                raise
            finally:
                elapsed = time.perf_counter() - started
                code = _code_of(context, failed)
                REQUESTS.labels(method=method, code=code.name).inc()
                LATENCY.labels(method=method).observe(elapsed)
                if self.access_log:
                    log.info("%s %s %.1fms", method, code.name, elapsed * 1000)

        return grpc.unary_unary_rpc_method_handler(observed, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int:
    """Serves Prometheus metrics at http://host:port/metrics in a daemon thread; returns the port."""
    server, _thread = start_http_server(port, addr=host)
    bound = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound
