"""Ports: the gateway's defaults (one fact for the gateway's settings, `lookalike serve`, the CLI and the
Python client), the search service's, and a free one for a process started here (tests, benches, the local
stack)."""
from __future__ import annotations

import socket

GATEWAY_GRPC_PORT = 50051
GATEWAY_HTTP_PORT = 8080
#: Where the CLI and LookalikeClient find a local gateway by default.
GATEWAY_ADDRESS = f"127.0.0.1:{GATEWAY_GRPC_PORT}"
#: The search service's gRPC port (LOOKALIKE_SEARCH_PORT's default).
SEARCH_PORT = 50052


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
