"""Admission control of query embeddings: cache hits never wait behind embedding work.

A query whose photo is not in the cache needs the embedder (a CPU-heavy forward pass in TorchServe). At most
`concurrency` such embeds run at once and at most `queue` more wait for a slot; a miss that finds the queue
full is shed at once (the gateway answers UNAVAILABLE / HTTP 503 with a retry hint, through the one status
table) instead of piling up threads and embedder work that cache hits would then queue behind. Hits never
enter the gate. Ingest and reindex have their own bounded bursts (lookalike_gateway.ingest_pipeline).
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from prometheus_client import Counter, Gauge

ADMITTED = Gauge("lookalike_gateway_query_embeds_admitted",
                 "Query embeds admitted by the gateway's embed gate (running or waiting for a slot)")
SHED = Counter("lookalike_gateway_query_embeds_shed_total",
               "Uncached queries answered UNAVAILABLE / 503 because the embed queue was full")


class EmbedQueueFull(Exception):
    """The gate is full: the query is shed. `retry_after_s` is the hint to give the caller."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EmbedGate:
    """At most `concurrency` embeds at once, at most `queue` more waiting; the rest are refused."""

    def __init__(self, concurrency: int, queue: int, retry_after_s: float):
        if concurrency < 1 or queue < 0:
            raise ValueError("concurrency must be >= 1 and queue >= 0")
        self.concurrency = concurrency
        self.capacity = concurrency + queue
        self.retry_after_s = retry_after_s
        self._slots = threading.Semaphore(concurrency)
        self._lock = threading.Lock()
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Embeds running or waiting now."""
        return self._admitted

    @contextlib.contextmanager
    def admit(self, timeout: float) -> Iterator[None]:
        """Holds an embed slot for the block. Raises EmbedQueueFull at once when `concurrency` embeds run
        and `queue` wait already; TimeoutError when no slot frees within `timeout` seconds."""
        with self._lock:
            if self._admitted >= self.capacity:
                SHED.inc()
                raise EmbedQueueFull(f"the gateway is busy embedding {self._admitted} uncached query photos "
                                     f"(at most {self.capacity}); retry later (cached photos are still answered)",
                                     self.retry_after_s)
            self._admitted += 1
            ADMITTED.set(self._admitted)
        try:
            if not self._slots.acquire(timeout=max(0.0, timeout)):
                raise TimeoutError("waiting for an embed slot")
            try:
                yield
            finally:
                self._slots.release()
        finally:
            with self._lock:
                self._admitted -= 1
                ADMITTED.set(self._admitted)
