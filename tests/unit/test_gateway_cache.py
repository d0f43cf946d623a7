"""cache.py: the embedding cache never makes a dead or slow Redis the request's problem."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np

from lookalike_gateway.cache import EmbeddingCache


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dead_redis_is_skipped_quickly():
    from prometheus_client import REGISTRY

    def events(name):
        return REGISTRY.get_sample_value("lookalike_gateway_cache_events_total", {"event": name}) or 0.0

    errors, skipped = events("error"), events("skipped")
    cache = EmbeddingCache(f"redis://127.0.0.1:{_closed_port()}/0", "m", ttl_s=60, timeout_s=0.05,
                           retry_after_s=600)
    assert cache.get("ab" * 32) is None
    cache.put("ab" * 32, np.ones(4, dtype=np.float32))
    for _ in range(100):  # skipped without touching the socket again (counted, not timed)
        assert cache.get("cd" * 32) is None
    assert events("error") - errors == 1 and events("skipped") - skipped == 100
    assert cache.ping() is False


def test_slow_redis_is_skipped_within_its_timeout():
    # A server that accepts and never answers: the cache must give up after its socket timeout.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    cache = EmbeddingCache(f"redis://127.0.0.1:{port}/0", "m", ttl_s=60, timeout_s=0.1, retry_after_s=5)
    started = time.perf_counter()
    assert cache.get("ef" * 32) is None
    assert time.perf_counter() - started < 10.0  # gave up (a generous bound: the machine may be loaded)
    server.close()
