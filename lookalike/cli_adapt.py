"""`lookalike adapt`: learn an adapted embedding from the catalogue and switch searches to it (gRPC
AdaptCatalogue, see lookalike_gateway.adaptation); prints progress, the validation table and the gate."""
from __future__ import annotations

import json
import sys


def add_parser(sub, default_gateway: str) -> None:
    adapt = sub.add_parser("adapt", help="learn a projection of the stored embeddings from the catalogue's own "
                           "photos; build an adapted collection and switch searches to it unless held-out "
                           "figures get worse")
    adapt.add_argument("--label-field", default="product",
                       help="product (default: photos of one product), category, or attributes.<name>")
    adapt.add_argument("--plain", action="store_true",
                       help="back to the plain space: a collection of the raw vectors, products written since kept")
    adapt.add_argument("--no-activate", action="store_true", help="build it, but keep searching the active one")
    adapt.add_argument("--force", action="store_true", help="activate even when a held-out figure got worse")
    adapt.add_argument("--report", help="write the report (JSON) here")
    adapt.add_argument("--gateway", default=default_gateway)
    adapt.add_argument("--api-key", help="API key (or env LOOKALIKE_API_KEY)")
    adapt.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    adapt.set_defaults(func=cmd_adapt)


def cmd_adapt(args) -> int:
    import grpc

    from lookalike.cli import _stub
    from lookalike.v1 import lookalike_pb2

    channel, stub, metadata = _stub(args)
    request = lookalike_pb2.AdaptCatalogueRequest(label_field=args.label_field, plain=args.plain,
                                                  activate=not args.no_activate, force=args.force)
    last = None
    try:
        for progress in stub.AdaptCatalogue(request, metadata=metadata):
            last = progress
            if not args.quiet and not progress.finished:
                where = f" {progress.done}/{progress.total}" if progress.total else ""
                print(f"[{progress.stage}]{where} {progress.message}", flush=True)
    except grpc.RpcError as exc:
        print(f"error: adaptation failed: {exc.code().name}: {exc.details()}\n"
              "searches still use the active collection", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: searches still use the active collection", file=sys.stderr)
        return 130
    finally:
        channel.close()
    if last is None:
        return 1
    report = json.loads(last.report_json) if last.report_json else {}
    if args.report:
        with open(args.report, "w") as out:
            json.dump(report, out, indent=2)
    print_report(report)
    if last.activated:
        print(f"searches now use {last.collection} (was {last.previous}); "
              "`lookalike collections rollback` switches back, `lookalike adapt --plain` leaves the adaptation")
        return 0
    if last.collection:
        print(f"built {last.collection}, not activated: `lookalike collections activate {last.collection}`")
        return 0
    print(last.message, file=sys.stderr)
    return 2


def print_report(report: dict) -> None:
    if "chosen" not in report:
        return
    print(f"{report['photos']} photos, {report['labels']} labels ({report['labels_with_2_photos']} with 2+ photos); "
          f"fitted in {report.get('fit_seconds')} s; chosen: {report['chosen']}")
    for kind, name in (("seen", "held-out photos of seen labels"), ("unseen", "labels left out of the fit")):
        before, after = report["before"][kind], report["after"][kind]
        if before.get("p@1") is None:
            continue
        print(f"  {name} ({before['queries']}): P@1 {before['p@1']} -> {after['p@1']}, "
              f"R@5 {before['r@5']} -> {after['r@5']}, mAP {before['map']} -> {after['map']}")
    for regression in report.get("regressions", []):
        print(f"  worse: {regression}")
