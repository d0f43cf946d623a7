"""`lookalike adapt`: learn an adapted embedding from the catalogue and switch searches to it (gRPC
AdaptCatalogue, see lookalike_gateway.adaptation); prints progress, the validation table and the gate."""
from __future__ import annotations

import json
import sys
import time

from lookalike.cli_common import gateway_stub, print_figures

POLL_S = 0.5


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
    """Starts the job (StartAdaptation) and follows it (GetAdaptation) until it is done."""
    import grpc

    from lookalike.v1 import lookalike_pb2, types_pb2

    channel, stub, metadata = gateway_stub(args)
    request = lookalike_pb2.StartAdaptationRequest(label_field=args.label_field, plain=args.plain,
                                                   activate=not args.no_activate, force=args.force)
    try:
        job = stub.StartAdaptation(request, metadata=metadata, timeout=60).job
        if not args.quiet:
            print(f"adaptation job {job.id} started", flush=True)
        stage = ""
        while True:
            response = stub.GetAdaptation(lookalike_pb2.GetAdaptationRequest(job_id=job.id), metadata=metadata,
                                          timeout=60)
            job = response.job
            if not args.quiet and job.stage != stage:
                stage = job.stage
                print(f"[{job.progress:4.0%}] {stage}", flush=True)
            if job.state in (types_pb2.JOB_STATE_SUCCEEDED, types_pb2.JOB_STATE_FAILED):
                break
            time.sleep(POLL_S)
    except grpc.RpcError as exc:
        print(f"error: adaptation failed: {exc.code().name}: {exc.details()}\n"
              "searches still use the active collection", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the adaptation job goes on in the gateway", file=sys.stderr)
        return 130
    finally:
        channel.close()
    if job.state == types_pb2.JOB_STATE_FAILED:
        print(f"error: adaptation failed: {job.error_code}: {job.error_message}\n"
              "searches still use the active collection", file=sys.stderr)
        return 1
    result = response.result
    report = json.loads(result.report_json) if result.report_json else {}
    if args.report:
        with open(args.report, "w") as out:
            json.dump(report, out, indent=2)
    print_report(report)
    if result.activated:
        print(f"searches now use {result.collection} (was {result.previous}); "
              "`lookalike collections rollback` switches back, `lookalike adapt --plain` leaves the adaptation")
        return 0
    if result.collection:
        print(f"built {result.collection}, not activated: `lookalike collections activate {result.collection}`")
        return 0
    print(f"not adapted: {result.refused}", file=sys.stderr)
    return 2


def print_report(report: dict) -> None:
    if "chosen" not in report:
        return
    print(f"{report['photos']} photos, {report['labels']} labels ({report['labels_with_2_photos']} with 2+ photos); "
          f"fitted in {report.get('fit_seconds')} s; chosen: {report['chosen']}")
    print_figures(report)
