"""Request ids that travel gateway -> embedder -> search (gRPC metadata `x-request-id`) and appear in logs."""
from __future__ import annotations

import contextvars
import logging
import uuid

METADATA_KEY = "x-request-id"
HTTP_HEADER = "X-Request-ID"

current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def new() -> str:
    return uuid.uuid4().hex[:16]


def accept(candidate: str | None) -> str:
    """Uses the caller's id when it is sane (short, printable), else a new one; makes it current."""
    rid = candidate if candidate and len(candidate) <= 64 and candidate.isprintable() and '"' not in candidate \
        else new()
    current.set(rid)
    return rid


def from_grpc(context) -> str:
    """Takes the id from incoming gRPC metadata (or makes one) and makes it current."""
    metadata = dict(context.invocation_metadata() or ())
    return accept(metadata.get(METADATA_KEY))


def metadata() -> list[tuple[str, str]]:
    """Outgoing gRPC metadata carrying the current id."""
    return [(METADATA_KEY, current.get())]


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current.get()
        return True
