"""How a caller presents its API key to the gateway (a leaf: the gateway's check and every client read it here):
gRPC metadata `x-api-key` or HTTP header `X-API-Key` (or `authorization: Bearer <key>`); the command line
takes it from --api-key or the environment variable LOOKALIKE_API_KEY."""
from __future__ import annotations

METADATA_KEY = "x-api-key"
HTTP_HEADER = "X-API-Key"
ENV_VAR = "LOOKALIKE_API_KEY"


def metadata(key: str | None) -> list[tuple[str, str]] | None:
    """gRPC metadata carrying `key`; None without one."""
    return [(METADATA_KEY, key)] if key else None


def headers(key: str | None) -> dict[str, str]:
    """HTTP headers carrying `key`; empty without one."""
    return {HTTP_HEADER: key} if key else {}
