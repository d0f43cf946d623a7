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
