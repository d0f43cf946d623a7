"""API-key authentication (off when no keys are configured)."""
from __future__ import annotations

import hmac
import threading
import time

import grpc

from lookalike import api_keys

from .errors import ApiError



def bearer_token(header: str | None) -> str | None:
    """The token of an `authorization: Bearer <token>` header or metadata value, else None."""
    scheme, _, token = (header or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class ApiKeyCheck:
    """Accepts a request when keys are off, or when it carries one of the configured keys; then applies
    the caller's rate limit."""

    def __init__(self, keys: frozenset[str], limiter: "RateLimiter | None" = None):
        self.keys = keys
        self.limiter = limiter

    def check(self, presented: str | None, caller: str = "") -> str | None:
        """Returns the matching key (None when keys are off); raises UNAUTHENTICATED for a missing or
        wrong key and RESOURCE_EXHAUSTED when the caller is over its rate limit."""
        key = self._match(presented)
        if self.limiter:
            self.limiter.take(key or caller)
        return key

    def _match(self, presented: str | None) -> str | None:
        if not self.keys:
            return None
        if presented:
            for key in self.keys:
                if hmac.compare_digest(presented.encode(), key.encode()):
                    return key
        raise ApiError(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key")

    def check_grpc(self, context: grpc.ServicerContext) -> str | None:
        """Checks the key in metadata `x-api-key` (or `authorization: Bearer ...`)."""
        metadata = dict(context.invocation_metadata() or ())
        presented = metadata.get(api_keys.METADATA_KEY) or bearer_token(metadata.get("authorization"))
        peer = context.peer() or ""
        return self.check(presented, caller=peer.rsplit(":", 1)[0])


class RateLimiter:
    """Token bucket per caller (API key, or client address when keys are off); `rate_per_s` 0 disables it."""

    def __init__(self, rate_per_s: float, burst: int):
        self.rate = rate_per_s
        self.burst = max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, caller: str) -> None:
        """Spends one token of `caller`; raises RESOURCE_EXHAUSTED (HTTP 429, with Retry-After) when none is left."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(caller, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[caller] = (tokens, now)
                raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit exceeded, retry later",
                               http_status=429, retry_after_s=(1 - tokens) / self.rate)
            self._buckets[caller] = (tokens - 1, now)
            if len(self._buckets) > 100_000:  # forget idle callers rather than grow without bound
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
