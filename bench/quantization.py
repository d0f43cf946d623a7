"""Quantization in the search service: recall@10 and memory against float32 (qdrant-edge, clustered 1280-d).

    python bench/quantization.py [--n 100000]                   # runs float32, int8, binary (~5-15 min each here)
    python bench/quantization.py --assemble none.json int8.json binary.json [--n N]   # from saved worker outputs

One process per setting (bench/store_suite.py --worker, i.e. lookalike_search.bench.run with the RSS hook), run
one after the other at nice 15: the same data (seed 0: 100 clusters, spread 1.0), m=16, ef_construct 100,
200 queries, query-time ef 64 and 128, with and without the filter (category AND price, ~5%).
Memory = the collection folder on disk after the build (segments + WAL, st_blocks) and the process RSS delta
(before the store exists vs after upsert + HNSW build). qdrant-edge is the engine that applies the setting
(qdrant-local accepts and ignores it). int8 = scalar, quantile 0.99; binary = 1 bit/dimension; both rescore
the oversampled (x2) candidates with the float32 originals.
Writes bench/results/quantization.json and quantization.md (inputs of deploy/capacity.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = ("none", "int8", "binary")
EFS = [64, 128]


def config(q: str, n: int) -> dict:
    return {"label": f"edge m16 {q} {n}", "engine": "qdrant-edge", "n": n, "queries": 200, "hnsw_m": 16,
            "quantization": q, "efs": EFS, "repeats": 1}


def run_worker(q: str, n: int) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(["nice", "-n", "15", sys.executable, str(HERE / "store_suite.py"), "--worker",
                           json.dumps(config(q, n))], capture_output=True, text=True, cwd=HERE, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(outs: dict[str, dict]) -> dict:
    ef = str(EFS[-1])
    summary = {}
    for q, o in outs.items():
        un, fl = o["sweep"]["unfiltered"], o["sweep"]["filtered"]
        n = o["n"]
        summary[q] = {
            "recall_at_10": un[ef]["recall_at_10"]["median"],
            "recall_at_10_filtered": fl[ef]["recall_at_10"]["median"],
            "recall_at_10_ef64": un["64"]["recall_at_10"]["median"],
            "p50_ms": un[ef]["p50_ms"]["median"], "p99_ms": un[ef]["p99_ms"]["median"],
            "p50_ms_filtered": fl[ef]["p50_ms"]["median"],
            "disk_mib": o["disk_mib"], "disk_bytes_per_point": round(o["disk_mib"] * 2**20 / n),
            "rss_delta_mib": o["rss_delta_mib"], "rss_bytes_per_point": round(o["rss_delta_mib"] * 2**20 / n),
            "index_build_s": o["index_build_s"], "upsert_points_per_s": o["upsert_points_per_s"],
        }
    base = summary.get("none")
    if base:
        for q, s in summary.items():
            s["vs_float32"] = {
                "recall_at_10_delta": round(s["recall_at_10"] - base["recall_at_10"], 4),
                "disk_ratio": round(s["disk_mib"] / base["disk_mib"], 3),
                "rss_ratio": round(s["rss_delta_mib"] / base["rss_delta_mib"], 3) if base["rss_delta_mib"] else None,
                "p50_ratio": round(s["p50_ms"] / base["p50_ms"], 3),
            }
    return summary


def markdown(result: dict) -> str:
    s = result["summary"]
    names = {"none": "float32", "int8": "int8 (scalar) + rescore", "binary": "binary + rescore",
             "binary_os16": "binary + rescore, oversampling 16"}
    lines = [f"# Quantization: recall@10 and memory vs float32 ({result['n']:,} points, qdrant-edge)", "",
             result["description"], "", result.get("note", ""), "",
             f"Machine: {result['cpus']} shared cores, load average at start {result['load_at_start']}. "
             f"Query-time ef {result['search_ef']}; recall against exact cosine top-10.", "",
             "| setting | recall@10 | recall@10 (ef 64) | recall@10 filtered | p50 ms | p99 ms | disk MiB | disk vs f32 "
             "| RSS delta MiB | RSS vs f32 | HNSW build s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for q in s:
        v = s[q]
        vs = v.get("vs_float32", {})
        lines.append(f"| {names.get(q, q)} | {v['recall_at_10']:.3f} | {v['recall_at_10_ef64']:.3f} | "
                     f"{v['recall_at_10_filtered']:.3f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['disk_mib']:,.0f} | "
                     f"{vs.get('disk_ratio', 1):.2f}x | {v['rss_delta_mib']:,.0f} | "
                     f"{(vs.get('rss_ratio') or 1):.2f}x | {v['index_build_s']:,.0f} |")
    lines += ["", f"Command: `{result['command']}`"]
    lines += ["", "Reading it: " + result["reading"], ""]
    return "\n".join(lines)


def _command_args(argv: list[str]) -> list[str]:
    """argv without the long free-text values of --note / --reading (they are in the report anyway)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--note", "--reading"):
            out.append(a + " ...")
            skip = True
            continue
        out.append(a)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--assemble", nargs=3, metavar=("NONE", "INT8", "BINARY"), type=Path)
    parser.add_argument("--load-at-start", default=None, help="with --assemble: the load average the runs started at")
    parser.add_argument("--reading", default="", help="a sentence of interpretation for the report")
    parser.add_argument("--note", default="", help="a note on how the runs were made (size, machine)")
    parser.add_argument("--extra", nargs=2, action="append", default=[], metavar=("NAME", "WORKER_JSON"),
                        help="with --assemble: another worker output to report (e.g. binary with oversampling 16)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    load = [round(x, 2) for x in os.getloadavg()]
    if args.assemble:
        outs = {q: json.loads(p.read_text().strip().splitlines()[-1]) for q, p in zip(SETTINGS, args.assemble)}
        for name, path in args.extra:
            outs[name] = json.loads(Path(path).read_text().strip().splitlines()[-1])
        load = args.load_at_start or load
    else:
        outs = {}
        for q in SETTINGS:
            started = time.perf_counter()
            print(f"[quantization] {q} ...", flush=True)
            outs[q] = run_worker(q, args.n)
            print(f"[quantization] {q}: {time.perf_counter() - started:.0f} s", flush=True)
    first = outs["none"]
    result = {
        "n": first["n"], "dim": first["dim"], "engine": first["engine"], "hnsw_m": first["hnsw_m"],
        "hnsw_ef_construct": first["hnsw_ef_construct"], "search_ef": EFS[-1], "efs": EFS, "top_k": first["top_k"],
        "clusters": first["clusters"], "spread": first["spread"], "cpus": first["cpus"], "load_at_start": load,
        "description": __doc__.split("\n\n", 2)[2].strip().replace("\n", " "),
        "command": "python bench/quantization.py " + " ".join(_command_args(argv if argv is not None else sys.argv[1:])),
        "reading": args.reading, "note": args.note,
        "quantization_oversampling_default": 2.0,
        "summary": summarize(outs), "runs": outs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantization.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "quantization.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
