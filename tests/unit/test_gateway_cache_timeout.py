"""The gateway's Redis timeout: a Redis that answers a GET in 60 ms (a loaded machine) is a cache hit with
the default (0.25 s), where the old 50 ms skipped the cache, so a hit became an embed (bench/hit_priority.py)."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from lookalike import vectors
from lookalike_gateway.cache import EmbeddingCache
from lookalike_gateway.settings import GatewaySettings

VECTOR = np.arange(8, dtype=np.float32) / 10


class SlowRedis:
    """A RESP server on loopback answering GET with VECTOR after `delay_s` (HELLO: a RESP3 handshake; every
    other command: +OK)."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        with conn:
            while True:
                line = reader.readline()
                if not line.startswith(b"*"):
                    return
                args = []
                for _ in range(int(line[1:])):
                    size = int(reader.readline()[1:])
                    args.append(reader.read(size + 2)[:-2])
                if args and args[0].upper() == b"GET":
                    time.sleep(self.delay_s)
                    payload = vectors.pack(VECTOR)
                    conn.sendall(b"$%d\r\n%s\r\n" % (len(payload), payload))
                elif args and args[0].upper() == b"HELLO":  # redis-py's handshake (RESP3)
                    conn.sendall(b"%3\r\n+server\r\n+redis\r\n+version\r\n+7.0.0\r\n+proto\r\n:3\r\n")
                else:
                    conn.sendall(b"+OK\r\n")

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()


@pytest.fixture
def slow_redis():
    server = SlowRedis(delay_s=0.06)  # above the old 50 ms, well below 0.25 s
    yield server
    server.close()


def test_default_redis_timeout_is_a_quarter_second(monkeypatch):
    monkeypatch.delenv("LOOKALIKE_GATEWAY_REDIS_TIMEOUT_S", raising=False)
    assert GatewaySettings().redis_timeout_s == 0.25


def test_a_slow_but_healthy_redis_is_a_hit_with_the_default_timeout(slow_redis, monkeypatch):
    monkeypatch.delenv("LOOKALIKE_GATEWAY_REDIS_TIMEOUT_S", raising=False)
    timeout = GatewaySettings().redis_timeout_s
    cache = EmbeddingCache(f"redis://127.0.0.1:{slow_redis.port}/0", "m", ttl_s=60, timeout_s=timeout,
                           retry_after_s=2.0)
    got = cache.get("abc")
    assert got is not None and np.allclose(got, VECTOR)


def test_below_the_redis_answer_time_the_cache_is_skipped(slow_redis):
    """What the old 50 ms default did on a loaded machine: the hit is lost, and the cache is skipped after."""
    cache = EmbeddingCache(f"redis://127.0.0.1:{slow_redis.port}/0", "m", ttl_s=60, timeout_s=0.05,
                           retry_after_s=2.0)
    assert cache.get("abc") is None
    assert not cache._usable()  # skipped for retry_after_s: every hit of the next 2 s would be an embed
