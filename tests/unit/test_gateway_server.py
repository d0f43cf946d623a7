"""server.py: the listeners the gateway serves on."""
from __future__ import annotations

import socket


def test_rest_listener_accepts_connections_with_nodelay():
    """The REST listener must give asyncio sockets it puts TCP_NODELAY on: without it each keep-alive
    response body waited ~40 ms for the client's delayed ACK of the headers (Nagle)."""
    import asyncio

    from lookalike_gateway.server import _bind

    listener = _bind("127.0.0.1", 0)
    nodelay: list[int] = []

    async def accept_one():
        accepted = asyncio.Event()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                nodelay.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()
                accepted.set()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        async with server:
            _reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            await asyncio.wait_for(accepted.wait(), 60)  # the server side has the connection
            writer.close()

    asyncio.run(accept_one())
    assert nodelay and nodelay[0] != 0


def test_readiness_monitor_mirrors_the_probe_into_health_and_forgives_one_slow_probe():
    """The monitor needs only a probe (Gateway.dependencies) and the host's serving flag: one failed probe
    after a ready one is not an outage, the second in a row is; a draining gateway reports not ready."""
    import threading

    from lookalike_gateway.core import Dependencies
    from lookalike_gateway.server import ReadinessMonitor

    ready, down = Dependencies(True, True, False), Dependencies(False, True, True)
    answers, timeouts, serving = [ready, down, down, ready], [], []

    def probe(timeout):
        timeouts.append(timeout)
        return answers.pop(0)

    host = type("Host", (), {"set_serving": lambda self, flag: serving.append(flag)})()
    stopping = threading.Event()
    monitor = ReadinessMonitor(probe, host, interval=5.0, stopping=stopping)
    assert monitor.refresh() == ready and serving == [True]  # the cache is optional
    assert monitor.refresh() == ready and serving == [True]  # one slow probe: still the last snapshot
    assert monitor.refresh() == down and serving == [True, False]
    assert monitor.refresh() == ready and serving == [True, False, True]
    assert timeouts == [1.0] * 4  # at most 1 s per probe
    stopping.set()
    assert monitor.snapshot() == Dependencies(False, False, False)
