"""Tiny health-check CLI for container health checks and exec probes.

    python -m lookalike.healthcheck grpc HOST:PORT [SERVICE] [--timeout S]
        exits 0 iff the gRPC health protocol (grpc.health.v1.Health/Check) answers SERVING
        for SERVICE ("" = the server as a whole).
    python -m lookalike.healthcheck http URL [--timeout S]
        exits 0 iff a GET of URL answers 200 (redirects are not followed, proxies are ignored).

Any other outcome exits 1 with one line on stderr saying why; a usage error exits 2.
Imports stay minimal (grpc only for the grpc check) so a check costs little CPU.
"""
from __future__ import annotations

import argparse
import sys

DEFAULT_TIMEOUT_S = 3.0


def check_grpc(target: str, service: str = "", timeout: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """(True, "SERVING") iff the health service at `target` reports `service` SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from lookalike.grpc_channel import NO_PROXY_OPTIONS

    # never route a local health check through an HTTP proxy taken from the environment (NO_PROXY_OPTIONS)
    with grpc.insecure_channel(target, options=NO_PROXY_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            return False, f"{code.name if code else 'ERROR'}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def check_http(url: str, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """(True, "200") iff GET `url` answers exactly 200."""
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        return False, f"not an http(s) URL: {url!r}"

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        """A 3xx is not healthy: do not follow it (urllib then raises HTTPError)."""

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            return None

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())
    try:
        with opener.open(urllib.request.Request(url, method="GET"), timeout=timeout) as response:
            return response.status == 200, str(response.status)
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{type(exc).__name__}: {reason}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lookalike.healthcheck",
                                     description="Exit 0 iff the target is healthy.")
    sub = parser.add_subparsers(dest="kind", required=True)
    grpc_p = sub.add_parser("grpc", help="gRPC health protocol check")
    grpc_p.add_argument("target", help="HOST:PORT")
    grpc_p.add_argument("service", nargs="?", default="", help='service name ("" = whole server)')
    grpc_p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    http_p = sub.add_parser("http", help="HTTP GET, healthy iff 200")
    http_p.add_argument("url")
    http_p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")

    if args.kind == "grpc":
        ok, detail = check_grpc(args.target, args.service, args.timeout)
        what = f"grpc {args.target} {args.service!r}"
    else:
        ok, detail = check_http(args.url, args.timeout)
        what = f"http {args.url}"
    if not ok:
        print(f"unhealthy: {what}: {detail}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
