"""The `lookalike` command: serve the whole chain, index a catalogue, search by photo."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

DEFAULT_GATEWAY = "127.0.0.1:50051"


def _api_key(args) -> str | None:
    return args.api_key or os.environ.get("LOOKALIKE_API_KEY") or None


def cmd_serve(args) -> int:
    from lookalike.stack import Stack, StackConfig

    config = StackConfig(data_dir=Path(args.data_dir), http_port=args.http_port, grpc_port=args.grpc_port,
                         host=args.host, search_engine=args.engine)
    stack = Stack(config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"starting Lookalike (data in {stack.data_dir}, logs in {stack.logs}) ...", flush=True)
    try:
        stack.start()
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"error: the stack did not start: {exc}", file=sys.stderr)
        return 1
    print(f"Lookalike is ready: web UI and REST at {stack.http_url}/  (OpenAPI: {stack.http_url}/openapi.json)\n"
          f"gRPC API (lookalike.v1.Lookalike) at {stack.grpc_address}", flush=True)
    try:
        if args.index:
            code = _index(stack.grpc_address, Path(args.index), None, progress=True)
            if code:
                return code
            print(f"catalogue indexed. Search at {stack.http_url}/ — Ctrl-C stops every service.", flush=True)
        while not stop.wait(1.0):
            for process in (stack.redis, stack.search, stack.gateway):
                if process and not process.alive():
                    print(f"error: {process.name} exited unexpectedly; see {process.log_path}", file=sys.stderr)
                    return 1
    finally:
        print("stopping ...", flush=True)
        stack.stop()
        print("stopped.", flush=True)
    return 0


def _index(address: str, path: Path, api_key: str | None, progress: bool,
           failures_file: Path | None = None) -> int:
    from lookalike.ingest import index_items, scan_folder, write_failures

    import grpc
    try:
        items = scan_folder(path)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not items:
        print(f"error: no images found under {path} (expected <category>/<image> files)", file=sys.stderr)
        return 2
    try:
        report = index_items(address, items, api_key=api_key, progress=progress)
    except grpc.RpcError as exc:
        print(f"error: indexing failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(f"indexed {report.indexed} of {report.total} products in {report.seconds:.1f}s "
          f"({report.rate:.1f} img/s), {report.failed} failed")
    if report.failures:
        failures_file = failures_file or Path("index-failures.jsonl")
        write_failures(report, failures_file)
        print(f"failures with reasons: {failures_file}")
    return 0 if report.failed == 0 else 3


def cmd_index(args) -> int:
    return _index(args.gateway, Path(args.path), _api_key(args), progress=not args.quiet,
                  failures_file=Path(args.failures) if args.failures else None)


def cmd_search(args) -> int:
    import grpc

    from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc, types_pb2

    try:
        image = Path(args.image).read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.image}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    flt = types_pb2.Filter(category=args.category or "")
    if args.min_price is not None:
        flt.min_price = args.min_price
    if args.max_price is not None:
        flt.max_price = args.max_price
    key = _api_key(args)
    with grpc.insecure_channel(args.gateway) as channel:
        stub = lookalike_pb2_grpc.LookalikeStub(channel)
        try:
            response = stub.SearchByImage(lookalike_pb2.SearchByImageRequest(image=image, top_k=args.top_k,
                                                                            filter=flt),
                                          timeout=args.timeout, metadata=[("x-api-key", key)] if key else None)
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(f"{len(response.results)} results{' (cached query embedding)' if response.cache_hit else ''}")
    for rank, result in enumerate(response.results, 1):
        price = f"{result.product.price:.2f}" if result.product.HasField("price") else "-"
        print(f"{rank:3d}. {result.score:.4f}  {result.product.id}  [{result.product.category}]  {price}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike", description="Visual product search.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the whole chain (TorchServe, redis, search, gateway) locally")
    serve.add_argument("--data-dir", default="var", help="where indexes, images and logs live (default: var)")
    serve.add_argument("--http-port", type=int, default=8080, help="gateway REST/web port (default 8080)")
    serve.add_argument("--grpc-port", type=int, default=50051, help="gateway gRPC port (default 50051)")
    serve.add_argument("--host", default="127.0.0.1", help="address the gateway binds (default 127.0.0.1)")
    serve.add_argument("--engine", default="qdrant-local", choices=["qdrant-local", "qdrant-edge"],
                       help="embedded Qdrant engine (default qdrant-local)")
    serve.add_argument("--index", metavar="PATH", help="index this catalogue folder once the chain is ready")
    serve.set_defaults(func=cmd_serve)

    index = sub.add_parser("index", help="index a catalogue folder laid out <category>/<image>")
    index.add_argument("path")
    index.add_argument("--gateway", default=DEFAULT_GATEWAY, help=f"gateway gRPC address (default {DEFAULT_GATEWAY})")
    index.add_argument("--api-key", help="API key (or env LOOKALIKE_API_KEY)")
    index.add_argument("--failures", help="where to write failed items (default index-failures.jsonl)")
    index.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    index.set_defaults(func=cmd_index)

    search = sub.add_parser("search", help="find products that look like a photo")
    search.add_argument("image")
    search.add_argument("--gateway", default=DEFAULT_GATEWAY, help=f"gateway gRPC address (default {DEFAULT_GATEWAY})")
    search.add_argument("--top-k", type=int, default=10)
    search.add_argument("--category")
    search.add_argument("--min-price", type=float)
    search.add_argument("--max-price", type=float)
    search.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    search.add_argument("--api-key", help="API key (or env LOOKALIKE_API_KEY)")
    search.set_defaults(func=cmd_search)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
