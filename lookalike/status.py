"""The one table mapping gRPC status codes to HTTP status codes (and back)."""
from __future__ import annotations

import collections

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


# ---- structured error details (google.rpc.Status) ---------------------------------------------------
#
# An error's details travel as a list of plain dicts, the same on both transports:
#   {"type": "BadRequest", "field_violations": [{"field": "top_k", "description": "..."}]}
#   {"type": "ResourceInfo", "resource_type": "product", "resource_name": "sku-1", "description": "..."}
#   {"type": "RetryInfo", "retry_delay_s": 1.0}
# REST puts them in the error body's `details`; gRPC packs them into the google.rpc.Status it sends in
# the `grpc-status-details-bin` trailer (grpcio-status), where any gRPC client library can read them.

RETRY_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})


def bad_request(field: str, description: str) -> dict:
    return {"type": "BadRequest", "field_violations": [{"field": field, "description": description}]}


def resource_info(resource_type: str, resource_name: str, description: str = "") -> dict:
    return {"type": "ResourceInfo", "resource_type": resource_type, "resource_name": resource_name,
            "description": description}


def retry_info(delay_s: float) -> dict:
    return {"type": "RetryInfo", "retry_delay_s": round(float(delay_s), 3)}


class _RichStatus(collections.namedtuple("_RichStatus", ("code", "details", "trailing_metadata")), grpc.Status):
    pass


def to_rpc_status(code: grpc.StatusCode, message: str, details: list[dict],
                  metadata: tuple = ()) -> grpc.Status:
    """A grpc.Status for `context.abort_with_status`, carrying the details as google.rpc messages in the
    `grpc-status-details-bin` trailer, plus `metadata` (abort_with_status replaces the trailers)."""
    from google.rpc import error_details_pb2, status_pb2
    from grpc_status import rpc_status

    packed = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        kind = detail.get("type")
        if kind == "BadRequest":
            msg = error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v["field"], description=v["description"])
                for v in detail["field_violations"]])
        elif kind == "ResourceInfo":
            msg = error_details_pb2.ResourceInfo(resource_type=detail["resource_type"],
                                                 resource_name=detail["resource_name"],
                                                 description=detail.get("description", ""))
        elif kind == "RetryInfo":
            msg = error_details_pb2.RetryInfo()
            msg.retry_delay.FromMilliseconds(int(detail["retry_delay_s"] * 1000))
        else:
            continue
        packed.details.add().Pack(msg)
    return _RichStatus(code, message, ((rpc_status.GRPC_DETAILS_METADATA_KEY, packed.SerializeToString()),
                                       *metadata))


def rpc_error_details(exc: grpc.RpcError) -> list[dict]:
    """The details of a failed call (from its google.rpc.Status trailer) as dicts; [] when none."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    try:
        packed = rpc_status.from_call(exc)
    except (ValueError, AttributeError):  # no trailer, or a status that disagrees with the call's
        return []
    if packed is None:
        return []
    details = []
    for any_msg in packed.details:
        if any_msg.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            msg = error_details_pb2.BadRequest()
            any_msg.Unpack(msg)
            details.append({"type": "BadRequest", "field_violations": [
                {"field": v.field, "description": v.description} for v in msg.field_violations]})
        elif any_msg.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            msg = error_details_pb2.ResourceInfo()
            any_msg.Unpack(msg)
            details.append(resource_info(msg.resource_type, msg.resource_name, msg.description))
        elif any_msg.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            msg = error_details_pb2.RetryInfo()
            any_msg.Unpack(msg)
            details.append(retry_info(msg.retry_delay.ToMilliseconds() / 1000))
    return details
