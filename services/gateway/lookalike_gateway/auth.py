"""API-key authentication (off when no keys are configured)."""
from __future__ import annotations

import hmac

import grpc

from .core import ApiError

GRPC_METADATA_KEY = "x-api-key"
HTTP_HEADER = "X-API-Key"


class ApiKeyCheck:
    """Accepts a request when keys are off, or when it carries one of the configured keys."""

    def __init__(self, keys: frozenset[str]):
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, presented: str | None) -> str | None:
        """Returns the matching key (None when keys are off); raises UNAUTHENTICATED otherwise."""
        if not self.keys:
            return None
        if presented:
            for key in self.keys:
                if hmac.compare_digest(presented.encode(), key.encode()):
                    return key
        raise ApiError(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key")

    def check_grpc(self, context: grpc.ServicerContext) -> str | None:
        metadata = dict(context.invocation_metadata() or ())
        presented = metadata.get(GRPC_METADATA_KEY)
        bearer = metadata.get("authorization", "")
        if not presented and bearer.lower().startswith("bearer "):
            presented = bearer[7:]
        return self.check(presented)
