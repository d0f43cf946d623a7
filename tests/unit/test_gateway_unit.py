"""Gateway pieces without servers: status table, settings errors, validation, cache fallbacks, batching."""
from __future__ import annotations

import socket
import threading
import time

import grpc
import numpy as np
import pytest

from lookalike.settings import ConfigError, load_settings
from lookalike.status import GRPC_TO_HTTP, grpc_status, http_status
from lookalike_gateway.cache import EmbeddingCache
from lookalike_gateway.errors import ApiError, Deadline
from lookalike_gateway.validation import validate_product_id, validate_top_k
from lookalike_gateway.microbatch import batches as _batches
from lookalike_gateway.image_store import ImageStore
from lookalike_gateway.settings import GatewaySettings


def test_status_table_round_trips_the_codes_clients_see():
    assert http_status(grpc.StatusCode.INVALID_ARGUMENT) == 400
    assert http_status(grpc.StatusCode.NOT_FOUND) == 404
    assert http_status(grpc.StatusCode.RESOURCE_EXHAUSTED) == 429
    assert http_status(grpc.StatusCode.UNAVAILABLE) == 503
    assert http_status(grpc.StatusCode.DEADLINE_EXCEEDED) == 504
    for code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        assert grpc_status(GRPC_TO_HTTP[code]) == code
    assert grpc_status(413) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_status(415) == grpc.StatusCode.INVALID_ARGUMENT


def test_invalid_setting_is_named(monkeypatch, capsys):
    monkeypatch.setenv("LOOKALIKE_GATEWAY_HTTP_PORT", "not-a-port")
    with pytest.raises(ConfigError) as err:
        load_settings(GatewaySettings)
    assert "LOOKALIKE_GATEWAY_HTTP_PORT" in str(err.value)
    monkeypatch.setenv("LOOKALIKE_GATEWAY_HTTP_PORT", "8080")
    monkeypatch.setenv("LOOKALIKE_GATEWAY_SEARCH_ADDRESS", "nohostport")
    with pytest.raises(ConfigError) as err:
        load_settings(GatewaySettings)
    assert "LOOKALIKE_GATEWAY_SEARCH_ADDRESS" in str(err.value)


@pytest.mark.parametrize("top_k, expected", [(None, 10), (1, 1), (1000, 1000)])
def test_top_k_accepted(top_k, expected):
    assert validate_top_k(top_k, 10) == expected


@pytest.mark.parametrize("top_k", [0, -1, 1001])
def test_top_k_rejected(top_k):
    with pytest.raises(ApiError) as err:
        validate_top_k(top_k, 10)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 600])
def test_bad_product_ids(bad):
    with pytest.raises(ApiError):
        validate_product_id(bad)


def test_deadline_runs_out():
    deadline = Deadline(0.01)
    assert deadline.remaining() > 0
    time.sleep(0.02)
    with pytest.raises(ApiError) as err:
        deadline.remaining()
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


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


def test_image_store_refuses_traversal(tmp_path):
    store = ImageStore(tmp_path)
    digest = "a" * 64
    store.put(digest, b"data")
    assert store.get(digest) == b"data"
    for bad in ("../../etc/passwd", "A" * 64, "a" * 63, "/abs"):
        assert store.get(bad) is None
        with pytest.raises(ValueError):
            store.path(bad)


def test_micro_batches_flush_when_the_stream_pauses():
    flushed = threading.Event()

    def paused_stream():  # pauses until the consumer saw the lone item flushed: no sleep, no race
        yield from range(5)
        assert flushed.wait(30), "a lone item was not flushed while the stream paused"
        yield from range(5, 7)

    batches = []
    for batch in _batches(paused_stream(), size=4, max_wait_s=0.02):
        if batch is not None:
            batches.append(batch)
            if batch == [4]:
                flushed.set()
    assert [x for b in batches for x in b] == list(range(7))
    assert batches == [[0, 1, 2, 3], [4], [5, 6]]


def test_api_keys_and_rate_limit():
    from lookalike_gateway.auth import ApiKeyCheck, RateLimiter

    check = ApiKeyCheck(frozenset({"k1", "k2"}), RateLimiter(rate_per_s=1.0, burst=2))
    with pytest.raises(ApiError) as err:
        check.check(None)
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(ApiError):
        check.check("wrong")
    assert check.check("k1") == "k1"
    assert check.check("k1") == "k1"
    with pytest.raises(ApiError) as err:
        check.check("k1")
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.value.http_status == 429
    assert 0 < err.value.retry_after_s <= 1.0
    assert check.check("k2") == "k2"  # limits are per key
    open_check = ApiKeyCheck(frozenset())
    assert open_check.check(None, caller="1.2.3.4") is None


def test_rest_listener_accepts_connections_with_nodelay():
    """The REST listener must give asyncio sockets it puts TCP_NODELAY on: without it each keep-alive
    response body waited ~40 ms for the client's delayed ACK of the headers (Nagle)."""
    import asyncio

    from lookalike_gateway.server import _bind

    listener = _bind("127.0.0.1", 0)
    nodelay: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport):
            nodelay.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def accept_one():
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        async with server:
            _reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            for _ in range(100):
                if nodelay:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(accept_one())
    assert nodelay and nodelay[0] != 0


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None), ("", None), (None, None)])
def test_bearer_token(header, token):
    from lookalike_gateway.auth import bearer_token

    assert bearer_token(header) == token
