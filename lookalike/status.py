"""The one table mapping gRPC status codes to HTTP status codes (and back)."""
from __future__ import annotations

import grpc

GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
}

# HTTP -> gRPC for the codes the REST side produces itself; first match in GRPC_TO_HTTP wins,
# with the HTTP-only codes below added.
HTTP_TO_GRPC: dict[int, grpc.StatusCode] = {}
for _code, _http in GRPC_TO_HTTP.items():
    HTTP_TO_GRPC.setdefault(_http, _code)
HTTP_TO_GRPC.update({413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
                     422: grpc.StatusCode.INVALID_ARGUMENT})


def http_status(code: grpc.StatusCode) -> int:
    """HTTP status for a gRPC status code."""
    return GRPC_TO_HTTP.get(code, 500)


def grpc_status(http: int) -> grpc.StatusCode:
    """gRPC status code for an HTTP status code."""
    if http in HTTP_TO_GRPC:
        return HTTP_TO_GRPC[http]
    return grpc.StatusCode.INTERNAL if http >= 500 else grpc.StatusCode.INVALID_ARGUMENT
