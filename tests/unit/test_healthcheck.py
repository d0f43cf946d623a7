"""lookalike.healthcheck against a real gRPC health server and a real HTTP server (as the CLI runs)."""
from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lookalike import healthcheck
from lookalike.ports import free_port


@pytest.fixture()
def health_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("lookalike.search.v1.SearchService", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("lookalike.v1.Lookalike", health_pb2.HealthCheckResponse.NOT_SERVING)
    yield f"127.0.0.1:{port}"
    server.stop(None)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        codes = {"/ok": 200, "/down": 503, "/redirect": 302, "/created": 201}
        code = codes.get(self.path, 404)
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/ok")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def http_base():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lookalike.healthcheck", *args],
                          capture_output=True, text=True, timeout=30)


def test_grpc_serving_overall_and_named(health_server):
    assert healthcheck.main(["grpc", health_server]) == 0
    assert healthcheck.main(["grpc", health_server, "lookalike.search.v1.SearchService"]) == 0


def test_grpc_not_serving_unknown_service_and_down(health_server):
    assert healthcheck.main(["grpc", health_server, "lookalike.v1.Lookalike"]) == 1
    assert healthcheck.main(["grpc", health_server, "no.such.Service"]) == 1
    ok, detail = healthcheck.check_grpc(f"127.0.0.1:{free_port()}", timeout=1.0)
    assert not ok and "UNAVAILABLE" in detail


def test_http_only_200_is_healthy(http_base):
    assert healthcheck.main(["http", f"{http_base}/ok"]) == 0
    for path in ("/down", "/redirect", "/created", "/missing"):
        assert healthcheck.main(["http", f"{http_base}{path}"]) == 1, path
    assert healthcheck.main(["http", f"http://127.0.0.1:{free_port()}/ok", "--timeout", "1"]) == 1
    assert healthcheck.main(["http", "ftp://example.invalid/"]) == 1


def test_cli_as_a_process(health_server, http_base):
    """The exact command lines the compose health checks and exec probes run."""
    assert _cli("grpc", health_server).returncode == 0
    bad = _cli("grpc", health_server, "lookalike.v1.Lookalike")
    assert bad.returncode == 1 and "NOT_SERVING" in bad.stderr
    assert _cli("http", f"{http_base}/ok").returncode == 0
    down = _cli("http", f"{http_base}/down")
    assert down.returncode == 1 and "503" in down.stderr
    assert _cli().returncode == 2  # usage error
