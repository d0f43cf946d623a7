"""Lookalike benchmarks: one entry point (`make bench`).

    python bench/run.py [--quick] [--suites quality,embedder,gateway,store] [--repeats N] [--dataset DIR]

Suites (bench/README.md explains every figure):
  quality   P@1/5/10/mAP on clothing-small by brute force, raw-pixel baseline, improvements selected on
            validation and reported on test (features cached in bench/results/features-*.npz)
  embedder  model-only images/s vs batch size (eager + faster CPU paths), FLOPs vs practical peak,
            decode+preprocess cost, TorchServe gRPC/REST vs concurrency, CUDA when present
  gateway   a real stack: ingest rate, served quality vs brute force, query latency/QPS at 1/8/32 clients,
            cache miss vs hit, gRPC vs REST
  store     lookalike_search.bench per engine/config: upsert rate, p50/p99, recall@10, RSS, int8 vs float32

Writes bench/results/latest.json, latest.md and PNG figures (--quick: quick.json, quick.md, quick-*.png, so a
quick run never overwrites the committed full run). With --suites, the other suites of an existing result
file are kept (re-run one suite without redoing the rest). Runs at nice 10; OMP_WAIT_POLICY=PASSIVE.
Full run ~60-90 min on 2 shared cores (first run; cached features make later ones shorter); --quick < 5 min
once the feature cache exists.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported anywhere in this process
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_DATASET, RESULTS, machine_info  # noqa: E402

SUITES = ("quality", "embedder", "gateway", "store")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat, small sizes, no 100k store (< ~5 min)")
    parser.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated subset of {SUITES}")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=None, help="output basename (default latest, quick with --quick)")
    parser.add_argument("--no-100k", action="store_true", help="store suite: skip the 100k configurations")
    parser.add_argument("--render", action="store_true", help="only redraw the figures and the report from the JSON")
    args = parser.parse_args(argv)
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = set(suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suites {sorted(unknown)}")
    repeats = args.repeats or (1 if args.quick else 3)
    name = args.name or ("quick" if args.quick else "latest")
    prefix = "quick-" if name == "quick" else ""
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / f"{name}.json", args.out / f"{name}.md"
    if args.render:
        import plots
        import report
        results = json.loads(json_path.read_text())
        results["figures"] = plots.make_all(results, args.out, prefix)
        json_path.write_text(json.dumps(results, indent=1))
        md_path.write_text(report.render(results))
        print(f"[bench] redrew {json_path.with_suffix('.md')} and {len(results['figures'])} figures")
        return 0
    try:
        os.nice(10)
    except OSError:
        pass
    if not (args.dataset / "train").is_dir():
        print(f"dataset not found: {args.dataset} (clothing-small with train/validation/test)", file=sys.stderr)
        return 2

    results: dict = {"suites": {}, "suite_seconds": {}}
    if set(suites) != set(SUITES) and json_path.exists():
        previous = json.loads(json_path.read_text())
        results["suites"] = previous.get("suites", {})
        results["suite_seconds"] = previous.get("suite_seconds", {})
        results["previous_machine"] = previous.get("machine")
    results.update({"machine": machine_info(), "quick": args.quick, "repeats": repeats,
                    "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "dataset": str(args.dataset), "command": " ".join(sys.argv)})
    print(f"[bench] {results['machine']}", flush=True)
    started = time.perf_counter()

    def save() -> None:
        results["seconds"] = round(time.perf_counter() - started, 1)
        json_path.write_text(json.dumps(results, indent=1))

    for suite in SUITES:
        if suite not in suites:
            continue
        print(f"[bench] ===== {suite} =====", flush=True)
        t0 = time.perf_counter()
        try:
            if suite == "quality":
                import quality_suite
                results["suites"]["quality"] = quality_suite.run(args.dataset, args.quick)
            elif suite == "embedder":
                import embedder_suite
                results["suites"]["embedder"] = embedder_suite.run(args.dataset, args.quick, repeats)
            elif suite == "gateway":
                import gateway_suite
                results["suites"]["gateway"] = gateway_suite.run(args.dataset, args.quick, repeats)
            elif suite == "store":
                import store_suite
                results["suites"]["store"] = store_suite.run(args.quick, repeats, with_100k=not (args.quick or args.no_100k))
        except Exception as exc:  # noqa: BLE001 - keep the other suites' figures
            traceback.print_exc()
            results["suites"][suite] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        results["suite_seconds"][suite] = round(time.perf_counter() - t0, 1)
        print(f"[bench] {suite} done in {results['suite_seconds'][suite] / 60:.1f} min", flush=True)
        save()

    import plots
    import report
    results["figures"] = plots.make_all(results, args.out, prefix)
    save()
    md_path.write_text(report.render(results))
    print(f"[bench] wrote {json_path}, {md_path} and {len(results['figures'])} figures in "
          f"{(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
