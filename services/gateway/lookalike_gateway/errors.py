"""What every gateway piece reports failures with: `ApiError` (a gRPC status code and a human message,
translated by the gRPC and REST layers through lookalike.status), the request's `Deadline`, and the
dependency failures (`dependency_error`). A leaf module: it imports nothing of the gateway.
"""
from __future__ import annotations

import time

import grpc

from lookalike import status

DEFAULT_RETRY_AFTER_S = 1.0  # the retry hint of an UNAVAILABLE / RESOURCE_EXHAUSTED answer that names none
SEARCH_NAME = "search service"  # the dependencies as error messages name them
EMBEDDER_NAME = "embedder (TorchServe)"
SHUTTING_DOWN = "the gateway is shutting down; retry elsewhere"  # UNAVAILABLE while draining (gRPC, REST, jobs)


class ApiError(Exception):
    """A failure to report to the caller with a gRPC status code and a human message."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None,
                 retry_after_s: float | None = None, details: list[dict] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status  # where REST is more precise than the table (413, 415)
        self.retry_after_s = retry_after_s
        self.details = details or []  # lookalike.status.bad_request / resource_info dicts

    def all_details(self) -> list[dict]:
        """The details, with RetryInfo added on RESOURCE_EXHAUSTED / UNAVAILABLE (REST `details`, gRPC
        google.rpc.Status)."""
        retryable = self.code in status.RETRY_CODES and self.http_status in (None, 429, 503)  # not a 413
        if retryable and not any(d.get("type") == "RetryInfo" for d in self.details):
            return [*self.details, status.retry_info(self.retry_after_s or DEFAULT_RETRY_AFTER_S)]
        return self.details

    def prefixed(self, prefix: str) -> ApiError:
        """The same error (code, HTTP status, retry delay, details such as a field violation) with its message
        prefixed (e.g. "image 2: " for a product with several)."""
        if not prefix:
            return self
        return ApiError(self.code, prefix + self.message, http_status=self.http_status,
                        retry_after_s=self.retry_after_s, details=list(self.details))


class Deadline:
    """The time left for one request."""

    def __init__(self, seconds: float):
        self.expires = time.monotonic() + seconds

    def remaining(self, what: str = "request") -> float:
        """Seconds left; raises DEADLINE_EXCEEDED when none are."""
        left = self.expires - time.monotonic()
        if left <= 0:
            raise ApiError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded before {what}")
        return left

    def left(self) -> float:
        """Seconds left, negative once expired (never raises)."""
        return self.expires - time.monotonic()


def not_found(resource_type: str, name: str, message: str | None = None) -> ApiError:
    """NOT_FOUND naming what is missing (ResourceInfo)."""
    message = message or f"{resource_type} {name!r} not found"
    return ApiError(grpc.StatusCode.NOT_FOUND, message, details=[status.resource_info(resource_type, name, message)])


def bad_argument(field: str, message: str) -> ApiError:
    """INVALID_ARGUMENT naming the field at fault (BadRequest)."""
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message, details=[status.bad_request(field, message)])


def dependency_error(name: str, exc: grpc.RpcError) -> ApiError:
    """A failed call to a dependency (`name`: SEARCH_NAME, EMBEDDER_NAME) as the caller should see it:
    UNAVAILABLE / DEADLINE_EXCEEDED naming the dependency; the caller's own mistakes (INVALID_ARGUMENT,
    NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED) as they are; anything else UNAVAILABLE."""
    code = exc.code()
    details = exc.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE:
        return ApiError(code, f"{name} is unavailable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ApiError(code, f"{name} did not answer within the deadline")
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return ApiError(code, details)
    return ApiError(grpc.StatusCode.UNAVAILABLE, f"{name} failed: {code.name}: {details}")
