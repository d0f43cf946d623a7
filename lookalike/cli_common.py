"""What every `lookalike` subcommand that talks to the gateway shares (a leaf: cli and cli_adapt import it)."""
from __future__ import annotations

import os

from lookalike import api_keys, ports
from lookalike.grpc_channel import CLIENT_OPTIONS

DEFAULT_GATEWAY = ports.GATEWAY_ADDRESS


def api_key(args) -> str | None:
    """--api-key, else env LOOKALIKE_API_KEY, else none."""
    return args.api_key or os.environ.get(api_keys.ENV_VAR) or None


def gateway_stub(args):
    """(channel, LookalikeStub, metadata) for --gateway with the API key, if any; close the channel when done."""
    import grpc

    from lookalike.v1 import lookalike_pb2_grpc

    channel = grpc.insecure_channel(args.gateway, options=CLIENT_OPTIONS)
    key = api_key(args)
    return channel, lookalike_pb2_grpc.LookalikeStub(channel), api_keys.metadata(key)


def print_figures(report: dict) -> None:
    """Before -> after on held-out photos (an adaptation's or a reindex's gate report)."""
    if not report.get("before"):
        if report.get("note"):
            print(f"quality gate: {report['note']}")
        return
    for kind, name in (("seen", "held-out photos of seen labels"), ("unseen", "labels left out of the fit")):
        before, after = report["before"][kind], report["after"][kind]
        if before.get("p@1") is None:
            continue
        print(f"  {name} ({before['queries']}): P@1 {before['p@1']} -> {after['p@1']}, "
              f"R@5 {before['r@5']} -> {after['r@5']}, mAP {before['map']} -> {after['map']}")
    for regression in report.get("regressions", []):
        print(f"  worse: {regression}")
