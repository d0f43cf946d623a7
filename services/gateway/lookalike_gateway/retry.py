"""The one retry policy for calls to the gateway's dependencies (the search service, the embedder):
UNAVAILABLE is retried with exponential backoff while the request's deadline leaves room for another
try, then reported as UNAVAILABLE naming the dependency (never as a bare DEADLINE_EXCEEDED: the caller
learns what is down). Any other code (INVALID_ARGUMENT, NOT_FOUND, DEADLINE_EXCEEDED, ...) is not retried.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from .errors import Deadline, dependency_error


@dataclass(frozen=True)
class RetryPolicy:
    first_backoff_s: float = 0.05  # first pause before retrying; doubles up to max_backoff_s
    max_backoff_s: float = 1.0
    min_attempt_s: float = 0.05  # a retry needs at least this much of the deadline left after its backoff
    retryable: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE,)

    def backoff(self, attempt: int) -> float:
        """The pause before retry number `attempt` + 1 (attempt 0: after the first failure)."""
        return min(self.first_backoff_s * 2 ** attempt, self.max_backoff_s)

    def pause(self, attempt: int, deadline: Deadline) -> bool:
        """Sleeps the backoff of `attempt` and returns True when the deadline leaves room for another try
        after it; else returns False at once (give up)."""
        backoff = self.backoff(attempt)
        if deadline.left() <= backoff + self.min_attempt_s:
            return False
        time.sleep(backoff)
        return True

    def call(self, name: str, what: str, call: Callable[[float], object], deadline: Deadline,
             on_error: Callable[[grpc.RpcError], None] | None = None):
        """`call(timeout)` with what remains of the deadline, retried as the module docstring says; a
        failure is raised as errors.dependency_error(name, ...). `on_error` sees every failed attempt."""
        attempt = 0
        last: grpc.RpcError | None = None
        while True:
            if last is not None and deadline.left() <= 0:
                raise dependency_error(name, last)  # overslept the backoff: still "unavailable"
            timeout = deadline.remaining(what)
            try:
                return call(timeout)
            except grpc.RpcError as exc:
                if on_error:
                    on_error(exc)
                if exc.code() in self.retryable and self.pause(attempt, deadline):
                    last = exc
                    attempt += 1
                    continue
                raise dependency_error(name, exc) from None


POLICY = RetryPolicy()
