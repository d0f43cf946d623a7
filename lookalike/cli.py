"""The `lookalike` command: serve the whole chain, index a catalogue, search by photo."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from lookalike import cli_adapt, ports
from lookalike.cli_common import DEFAULT_GATEWAY, api_key, gateway_stub, print_figures


def cmd_serve(args) -> int:
    from lookalike.stack import Stack, StackConfig

    config = StackConfig(data_dir=Path(args.data_dir), http_port=args.http_port, grpc_port=args.grpc_port,
                         host=args.host, search_engine=args.engine, supervise=True)
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
        while not stop.wait(1.0):  # a child that exits is restarted by the stack's supervisor, which logs why
            pass
    finally:
        print("stopping ...", flush=True)
        stack.stop()
        print("stopped.", flush=True)
    return 0


def _index(address: str, path: Path, api_key: str | None, progress: bool,
           failures_file: Path | None = None, skip_duplicates: bool = False, duplicates_file: Path | None = None,
           max_image_bytes: int | None = None) -> int:
    import grpc

    from lookalike.catalogue_reader import CatalogueError, open_catalogue
    from lookalike.ingest import index_items
    from lookalike.limits import DEFAULT_MAX_UPLOAD_BYTES

    try:
        items, total = open_catalogue(path)
    except CatalogueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not total:
        print(f"error: no products in {path} (expected <category>/<image> files, or manifest rows)",
              file=sys.stderr)
        return 2
    failures_file = failures_file or Path("index-failures.jsonl")
    try:
        report = index_items(address, items, api_key=api_key, progress=progress, total=total,
                             skip_duplicates=skip_duplicates, failures_file=failures_file,
                             duplicates_file=duplicates_file,
                             max_image_bytes=max_image_bytes or DEFAULT_MAX_UPLOAD_BYTES)
    except grpc.RpcError as exc:
        print(f"error: indexing failed: {exc.code().name}: {exc.details()}\n"
              "everything acknowledged before is stored: run the same command again to resume", file=sys.stderr)
        return 1
    print(report.summary(), flush=True)
    if report.unchanged:
        print(f"{report.unchanged} unchanged: already stored with the same image and metadata, not re-embedded")
    if report.failures:
        print(f"failures with reasons: {failures_file}")
    if report.duplicates and duplicates_file:
        print(f"duplicates: {duplicates_file}")
    if report.interrupted:
        print("interrupted: everything acknowledged is stored; run the same command again to resume",
              file=sys.stderr)
        return 130
    return 0 if report.failed == 0 else 3


def cmd_index(args) -> int:
    return _index(args.gateway, Path(args.path), api_key(args), progress=not args.quiet,
                  failures_file=Path(args.failures) if args.failures else None,
                  skip_duplicates=args.skip_duplicates,
                  duplicates_file=Path(args.duplicates) if args.duplicates else None,
                  max_image_bytes=args.max_image_bytes)


def cmd_reindex(args) -> int:
    """Re-embeds the catalogue into another collection (from the stored originals) and, unless told not to,
    switches searches to it once complete."""
    import grpc
    from tqdm import tqdm

    from lookalike.v1 import lookalike_pb2

    channel, stub, metadata = gateway_stub(args)
    request = lookalike_pb2.ReindexRequest(model_version=args.model_version or "", collection=args.collection or "",
                                           activate=not args.no_activate, force=args.force)
    bar = None
    last = None
    failures = []
    quality = ""
    try:
        for progress in stub.Reindex(request, metadata=metadata):
            step = progress.pass_number
            new_pass = last is None or last.pass_number != step
            last = progress
            failures.extend(progress.failures)
            quality = progress.quality_json or quality
            if new_pass:
                if bar is not None:
                    bar.close()
                else:
                    print(f"reindexing {progress.source} -> {progress.collection} (model {progress.model_id})",
                          flush=True)
                bar = tqdm(total=progress.total, unit="item", desc=f"pass {step}", disable=args.quiet,
                           dynamic_ncols=True)
            bar.n = progress.done
            bar.set_postfix(written=progress.embedded, unchanged=progress.unchanged, failed=progress.failed,
                            removed=progress.removed, refresh=False)
            bar.refresh()
    except grpc.RpcError as exc:
        if bar is not None:
            bar.close()
        print(f"error: reindex failed: {exc.code().name}: {exc.details()}\n"
              "searches still use the active collection; run the same command again to resume", file=sys.stderr)
        _write_failures(failures, args.failures)
        return 1
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print("interrupted: searches still use the active collection; run the same command again to resume",
              file=sys.stderr)
        return 130
    finally:
        channel.close()
    if bar is not None:
        bar.close()
    if last is None:
        return 1
    print(f"{last.collection}: {last.embedded} written, {last.unchanged} unchanged in the last pass, "
          f"{last.failed} failed, {last.removed} removed ({last.pass_number} passes)")
    if quality:
        import json

        print_figures(json.loads(quality))
    if last.activated:
        print(f"searches now use {last.collection} (was {last.previous}); "
              "`lookalike collections rollback` switches back")
    else:
        print(f"not activated: `lookalike collections activate {last.collection}` switches searches to it")
    _write_failures(failures, args.failures)
    return 0 if not last.failed else 3


def _write_failures(failures, path: str | None) -> None:
    import json

    if not failures:
        return
    path = path or "reindex-failures.jsonl"
    with open(path, "w") as out:
        for failure in failures:
            out.write(json.dumps({"id": failure.product_id, "error": failure.error}) + "\n")
    print(f"failures with reasons: {path}")


def cmd_collections(args) -> int:
    import grpc

    from lookalike.v1 import lookalike_pb2

    channel, stub, metadata = gateway_stub(args)
    try:
        if args.action == "list":
            listing = stub.ListCollections(lookalike_pb2.ListCollectionsRequest(), metadata=metadata,
                                           timeout=args.timeout)
            print(f"alias {listing.alias} -> {listing.active}" + (f" (previous: {listing.previous})"
                                                                  if listing.previous else ""))
            for c in listing.collections:
                print(f"{'*' if c.active else ' '} {c.name:50s} model {c.model_id:24s} dim {c.vector_size:5d} "
                      f"{c.points:9d} products")
        else:
            switched = stub.ActivateCollection(lookalike_pb2.ActivateCollectionRequest(
                collection=args.name or "", rollback=args.action == "rollback"), metadata=metadata,
                timeout=args.timeout)
            print(f"searches now use {switched.active} (was {switched.previous})")
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    return 0


def cmd_search(args) -> int:
    from lookalike.client import LookalikeError

    try:
        image = Path(args.image).read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.image}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    with _client(args) as client:
        try:
            response = client.search_by_image(image, top_k=args.top_k, category=args.category,
                                              min_price=args.min_price, max_price=args.max_price,
                                              category_boost=args.category_boost, crop=args.crop,
                                              min_score=args.min_score)
        except ValueError as exc:  # a malformed --crop, refused before sending
            print(f"error: --crop: {exc}", file=sys.stderr)
            return 2
        except LookalikeError as exc:
            print(f"error: {exc.code.name}: {exc.message}", file=sys.stderr)
            return 1
    notes = [note for note, on in (("cached query embedding", response.cache_hit),
                                   (f"ordered with category boost {response.category_boost:g}",
                                    response.category_boost > 0)) if on]
    print(f"{len(response.results)} results{f' ({chr(44).join(notes)})' if notes else ''}")
    weak = response.weak_match_score
    if weak and (not response.results or response.results[0].score < weak):
        print(f"no close match: the best score is below this catalogue's weak-match score {weak:.3f}")
    for rank, result in enumerate(response.results, 1):
        price = f"{result.product.price:.2f}" if result.product.HasField("price") else "-"
        matched = f"  (image {result.matched_image})" if result.matched_image else ""
        print(f"{rank:3d}. {result.score:.4f}  {result.product.id}  [{result.product.category}]  {price}{matched}")
    return 0


def _client(args):
    from lookalike.client import LookalikeClient
    return LookalikeClient(args.gateway, api_key=api_key(args), timeout=args.timeout)


def cmd_train_classifier(args) -> int:
    """Starts a training job and follows it with a progress bar (gRPC StartClassifierTraining, then
    GetClassifierTraining until it is done)."""
    from tqdm import tqdm

    from lookalike.client import LookalikeError

    bar = tqdm(total=100, unit="%", desc="training", disable=args.quiet,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")

    def show(job) -> None:
        bar.n = round(job.progress * 100)
        bar.set_postfix_str(job.stage, refresh=False)
        bar.refresh()

    with _client(args) as client:
        try:
            report = client.train_classifier(args.label_field, holdout_fraction=args.holdout, on_progress=show,
                                             wait_s=args.timeout)
        except LookalikeError as exc:
            bar.close()
            print(f"error: {exc.code.name}: {exc.message}", file=sys.stderr)
            return 1
    bar.close()
    print(f"classifier {report.version} on {report.label_field} ({report.model_id}): {len(report.labels)} labels, "
          f"{report.train_size} train / {report.test_size} held out, accuracy {report.accuracy:.3f} "
          f"(3-fold CV {report.cv_accuracy:.3f}, C={report.c:g}), {report.seconds:.1f}s")
    width = max((len(m.label) for m in report.per_class), default=5)
    print(f"  {'label':<{width}}  precision  recall  held-out  trained")
    for m in report.per_class:
        print(f"  {m.label:<{width}}  {m.precision:9.2f}  {m.recall:6.2f}  {m.support:8d}  {m.train_examples:7d}")
    if report.skipped_labels:
        skipped = sorted(report.skipped_labels.items())
        print("  left out (too few examples): " + ", ".join(f"{k} ({v})" for k, v in skipped))
    return 0


def cmd_classify(args) -> int:
    from lookalike.client import LookalikeError

    try:
        image = Path(args.image).read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.image}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    with _client(args) as client:
        try:
            response = client.classify(image, top_k=args.top_k, crop=args.crop)
        except ValueError as exc:
            print(f"error: --crop: {exc}", file=sys.stderr)
            return 2
        except LookalikeError as exc:
            print(f"error: {exc.code.name}: {exc.message}", file=sys.stderr)
            return 1
    print(f"classifier {response.classifier_version}{' (cached query embedding)' if response.cache_hit else ''}")
    for prediction in response.predictions:
        print(f"  {prediction.probability:6.1%}  {prediction.label}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike", description="Visual product search.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the whole chain (TorchServe, redis, search, gateway) locally")
    serve.add_argument("--data-dir", default="var", help="where indexes, images and logs live (default: var)")
    serve.add_argument("--http-port", type=int, default=ports.GATEWAY_HTTP_PORT,
                       help=f"gateway REST/web port (default {ports.GATEWAY_HTTP_PORT})")
    serve.add_argument("--grpc-port", type=int, default=ports.GATEWAY_GRPC_PORT,
                       help=f"gateway gRPC port (default {ports.GATEWAY_GRPC_PORT})")
    serve.add_argument("--host", default="127.0.0.1", help="address the gateway binds (default 127.0.0.1)")
    serve.add_argument("--engine", default="", choices=["", "qdrant-edge", "qdrant-local"],
                       help="embedded Qdrant engine (default qdrant-edge; a data dir holding only qdrant-local "
                            "data keeps qdrant-local)")
    serve.add_argument("--index", metavar="PATH", help="index this catalogue folder once the chain is ready")
    serve.set_defaults(func=cmd_serve)

    index = sub.add_parser("index", help="index a catalogue: a folder laid out <category>/<image>, or a CSV/JSONL "
                           "manifest (id, image, title, category, price, other columns as attributes)")
    index.add_argument("path", help="catalogue folder, or manifest (.csv, .jsonl); re-running resumes/updates")
    index.add_argument("--gateway", default=DEFAULT_GATEWAY, help=f"gateway gRPC address (default {DEFAULT_GATEWAY})")
    index.add_argument("--api-key", help="API key (or env LOOKALIKE_API_KEY)")
    index.add_argument("--failures", help="where to write failed items (default index-failures.jsonl)")
    index.add_argument("--skip-duplicates", action="store_true",
                       help="do not store products whose image duplicates another product's (exact or near)")
    index.add_argument("--duplicates", help="write the duplicates found to this JSONL file")
    index.add_argument("--max-image-bytes", type=int, default=None,
                       help="larger image files fail without being sent (default 10 MiB, the gateway's limit)")
    index.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    index.set_defaults(func=cmd_index)

    reindex = sub.add_parser("reindex", help="re-embed the catalogue into another collection (another model "
                             "version, or a fresh copy) from the stored originals, then switch searches to it")
    reindex.add_argument("--model-version", help="embedder model version for the new collection "
                         "(default: the gateway's)")
    reindex.add_argument("--collection", help="target collection (default <alias>__<model id>, or __r2, __r3... "
                         "when that one is active); an existing one is brought up to date")
    reindex.add_argument("--no-activate", action="store_true", help="build it, but keep searching the active one")
    reindex.add_argument("--force", action="store_true", help="activate even though some products failed or "
                         "the new collection searches worse on held-out photos (the quality gate)")
    reindex.add_argument("--failures", help="where to write failed items (default reindex-failures.jsonl)")
    reindex.add_argument("--gateway", default=DEFAULT_GATEWAY)
    reindex.add_argument("--api-key", help="API key (or env LOOKALIKE_API_KEY)")
    reindex.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    reindex.set_defaults(func=cmd_reindex)

    cli_adapt.add_parser(sub, DEFAULT_GATEWAY)

    cols = sub.add_parser("collections", help="list collections, activate one, or roll back to the previous one")
    cols.add_argument("action", choices=["list", "activate", "rollback"])
    cols.add_argument("name", nargs="?", help="collection to activate (rollback: default the previous one)")
    cols.add_argument("--gateway", default=DEFAULT_GATEWAY)
    cols.add_argument("--api-key", help="API key (or env LOOKALIKE_API_KEY)")
    cols.add_argument("--timeout", type=float, default=30.0)
    cols.set_defaults(func=cmd_collections)

    search = sub.add_parser("search", help="find products that look like a photo")
    search.add_argument("image")
    search.add_argument("--gateway", default=DEFAULT_GATEWAY, help=f"gateway gRPC address (default {DEFAULT_GATEWAY})")
    search.add_argument("--top-k", type=int, default=10)
    search.add_argument("--category")
    search.add_argument("--min-price", type=float)
    search.add_argument("--max-price", type=float)
    search.add_argument("--category-boost", type=float,
                        help="weight of the category classifier in the order (server default 0.2; 0 = plain similarity)")
    search.add_argument("--crop", metavar="X,Y,W,H",
                        help="search with this region of the photo: fractions 0..1 of its width and height "
                             "(after EXIF orientation), e.g. 0.25,0.1,0.5,0.6")
    search.add_argument("--min-score", type=float, help="drop results scoring below this (cosine, -1..1)")
    search.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    search.add_argument("--api-key", help="API key (or env LOOKALIKE_API_KEY)")
    search.set_defaults(func=cmd_search)

    train = sub.add_parser("train-classifier", help="train a classifier on the stored embeddings (labels from a "
                           "payload field) and make it the active one")
    train.add_argument("--label-field", default="category", help="category (default) or attributes.<name>")
    train.add_argument("--holdout", type=float, help="held-out fraction for the accuracy report (default 0.2)")
    train.add_argument("--gateway", default=DEFAULT_GATEWAY, help=f"gateway gRPC address (default {DEFAULT_GATEWAY})")
    train.add_argument("--timeout", type=float, default=600.0, help="how long to wait for the training, in seconds "
                       "(it goes on on the gateway after that)")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    train.add_argument("--api-key", help="API key (or env LOOKALIKE_API_KEY)")
    train.set_defaults(func=cmd_train_classifier)

    classify = sub.add_parser("classify", help="the active classifier's labels for a photo")
    classify.add_argument("image")
    classify.add_argument("--gateway", default=DEFAULT_GATEWAY,
                          help=f"gateway gRPC address (default {DEFAULT_GATEWAY})")
    classify.add_argument("--top-k", type=int, default=5)
    classify.add_argument("--crop", metavar="X,Y,W,H", help="classify this region of the photo (fractions 0..1)")
    classify.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    classify.add_argument("--api-key", help="API key (or env LOOKALIKE_API_KEY)")
    classify.set_defaults(func=cmd_classify)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
