"""Capacity tables for deploy/CAPACITY.md, computed from this project's benchmark JSON.

    python deploy/capacity.py                    # print the tables (Markdown)
    python deploy/capacity.py --write            # replace the generated block in deploy/CAPACITY.md
    python deploy/capacity.py --check            # exit 1 if deploy/CAPACITY.md's block differs from a fresh run

Inputs (every figure printed names where it comes from):
  --bench         bench/results/latest.json (bench/run.py): embedder, gateway suites. Default: latest.json when it
                  has the embedder and gateway suites, else quick.json.
  --quantization  bench/results/quantization.json (bench/quantization.py): per-point disk/RSS, recall, latency
                  of qdrant-edge at 100k (or 50k) for float32 / int8 / binary+rescore.
  --redis         bench/results/redis_entry.json (bench/redis_entry.py): bytes per cached embedding in Redis.
  --served        bench/results/served.json (bench/served.py): the served embedder (ONNX Runtime in TorchServe,
                  the default): model-only, ceiling and served images/s, FLOPs, decode + preprocess per photo.
Public constants (SOURCES below) and design assumptions (ASSUMPTIONS below) are in this file, each with its
reference or its reason. The generated block in CAPACITY.md starts with a line naming the input files;
--check (and tests/unit/test_capacity.py) re-runs on those files, so the tables cannot drift from the JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CAPACITY_MD = Path(__file__).resolve().parent / "CAPACITY.md"
BEGIN = "<!-- capacity.py:begin"
END = "<!-- capacity.py:end -->"

# ---- public sources -------------------------------------------------------------------------------------
SOURCES = {
    "qdrant-capacity": "Qdrant docs, *Capacity Planning*, https://qdrant.tech/documentation/guides/capacity-planning/ "
                       "(memory = vectors x dimension x 4 B x 1.5; the extra 50% covers metadata, indexes, point "
                       "versions and temporary segments built during optimization)",
    "qdrant-quantization": "Qdrant docs, *Quantization*, https://qdrant.tech/documentation/guides/quantization/ "
                           "(scalar int8: 1 byte per dimension, 4x smaller; binary: 1 bit per dimension, 32x "
                           "smaller; originals kept, on disk/mmap, for rescoring)",
    "hnsw": "HNSW layer 0 keeps up to 2*m links per point (Malkov & Yashunin, *Efficient and robust approximate "
            "nearest neighbor search using Hierarchical Navigable Small World graphs*, arXiv:1603.09320, "
            "M_max0 = 2*M); each link is a 4-byte point offset (hnswlib, hnswalg.h: size_links_level0_ = "
            "maxM0_ * sizeof(tableint) + sizeof(linklistsizeint), maxM0_ = 2*M, https://github.com/nmslib/hnswlib); "
            "upper layers add ~1/m of that and are ignored here",
    "nvidia-l4": "NVIDIA L4 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/l4/ "
                 "(FP32: 30.3 TFLOPS)",
}
L4_FP32_TFLOPS = 30.3  # SOURCES["nvidia-l4"]

# ---- design assumptions (choices, not measurements; change them here) -------------------------------------
ASSUMPTIONS = {
    "hnsw_m": (16, "services/search/lookalike_search/settings.py default `hnsw_m`"),
    "replication_factor": (2, "deploy/kubernetes/base/kustomization.yaml search-config"),
    "payload_bytes": (300, "assumed: product_id, category, price and the image key as JSON, plus the two payload "
                           "indexes (category keyword, price float); not measured"),
    "node_ram_gib": (64, "assumed Qdrant node: 64 GiB RAM, 16 vCPU, NVMe"),
    "node_ram_usable": (0.7, "assumed: 70% of a node's RAM for resident data (the rest: OS page cache for the "
                             "mmap'd originals, Qdrant's own process, optimizer peaks)"),
    "node_disk_gib": (1024, "assumed: 1 TiB NVMe per Qdrant node"),
    "node_disk_usable": (0.5, "assumed: half the disk, so a second collection (re-embedding, alias switch) and "
                              "snapshots fit next to the live one"),
    "min_nodes": (3, "deploy/qdrant/statefulset.yaml: 3 peers minimum (survive the loss of one)"),
    "shards_per_node": (2, "assumed policy: shard_number = 2 x nodes (>= 6), so the cluster can double its nodes "
                           "without resharding (deploy/kubernetes/base uses 6 over 3 peers)"),
    "gpu_utilisation": (0.10, "assumed: 10% of the L4's FP32 peak for EfficientNet-Lite0 with ONNX Runtime's CUDA provider "
                              "(depthwise convolutions are memory-bound; on the CPU the served eager path "
                              "reaches only a fraction of the matmul peak: see the embedder inputs table); NO GPU "
                              "WAS MEASURED in this project"),
    "gpu_pod_cpus": (4, "deploy/kubernetes/overlays/gpu/embedder-gpu.yaml: cpu limit of a GPU embedder pod (its "
                        "CPUs decode and preprocess every JPEG before the GPU sees it)"),
    "cpu_target_utilisation": (0.5, "assumed: size CPU fleets for 50% average utilisation (headroom for peaks)"),
    "reembed_hours": (48, "target: re-embed the whole catalogue on a model change within 48 h"),
    "query_qps": ((100, 1000), "assumed peak query loads"),
    "cache_hit_rate": ((0.2, 0.5), "assumed embedding-cache hit rates (read yours from the gateway's "
                                    "lookalike_gateway_cache_events_total{event=hit|miss})"),
    "cache_windows_h": ((1, 24, 168), "how long a repeat query may come back and still hit: 168 h = the "
                                      "gateway's default cache_ttl_s (7 days)"),
}
SCALES = (1_000_000, 10_000_000, 100_000_000)
DIM = 1280
BYTES_PER_POINT = {"float32": DIM * 4, "int8": DIM, "binary": DIM // 8}  # SOURCES["qdrant-quantization"]
QUANT_KEYS = {"float32": "none", "int8": "int8", "binary": "binary"}
GIB = 2 ** 30


def A(name):
    return ASSUMPTIONS[name][0]


# ---- inputs ---------------------------------------------------------------------------------------------

class Inputs:
    def __init__(self, bench_path: Path, quant_path: Path, redis_path: Path, served_path: Path):
        self.paths = {"bench": bench_path, "quantization": quant_path, "redis": redis_path, "served": served_path}
        self.bench = json.loads(bench_path.read_text())
        self.quant = json.loads(quant_path.read_text())
        self.redis = json.loads(redis_path.read_text())
        self.served = json.loads(served_path.read_text())
        self.cited: list[tuple[str, str, object]] = []

    def rel(self, which: str) -> str:
        path = self.paths[which].resolve()
        try:
            return str(path.relative_to(REPO))
        except ValueError:
            return str(path)

    def get(self, which: str, dotted: str):
        node = {"bench": self.bench, "quantization": self.quant, "redis": self.redis, "served": self.served}[which]
        for part in dotted.split("."):
            try:
                node = node[part] if isinstance(node, dict) else node[int(part)]
            except (KeyError, IndexError, ValueError) as exc:
                raise SystemExit(f"capacity.py: {self.rel(which)} has no {dotted!r} ({exc})") from exc
        if isinstance(node, dict) and "median" in node:
            node = node["median"]
        if (which, dotted) not in [(w, d) for w, d, _ in self.cited]:
            self.cited.append((which, dotted, node))
        return node


def default_bench() -> Path:
    latest = RESULTS / "latest.json"
    try:
        suites = json.loads(latest.read_text()).get("suites", {})
        if "embedder" in suites and "gateway" in suites and "error" not in suites["embedder"]:
            return latest
    except (OSError, ValueError):
        pass
    return RESULTS / "quick.json"


# ---- helpers --------------------------------------------------------------------------------------------

def fmt_bytes(n: float) -> str:
    for unit, size in (("TiB", 2 ** 40), ("GiB", GIB), ("MiB", 2 ** 20)):
        if n >= size:
            value = n / size
            return f"{value:,.0f} {unit}" if value >= 100 else f"{value:,.1f} {unit}"
    return f"{n / 1024:,.1f} KiB"


def fmt_count(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}k" if n >= 1e3 else f"{n:,.0f}"


def ceil(x: float) -> int:
    return int(math.ceil(x - 1e-9))


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# ---- the model ------------------------------------------------------------------------------------------

def graph_bytes() -> int:
    return A("hnsw_m") * 2 * 4  # SOURCES["hnsw"]


def per_point(mode: str) -> dict:
    """RAM and disk bytes per point and replica, by Qdrant's 1.5 rule (SOURCES qdrant-capacity)."""
    vec, graph, payload = BYTES_PER_POINT[mode], graph_bytes(), A("payload_bytes")
    if mode == "float32":  # originals and graph in RAM
        ram = (vec + graph) * 1.5
        disk = (vec + graph + payload) * 1.5
    else:  # quantized vectors and graph in RAM; originals on disk (mmap) for rescoring
        ram = (vec + graph) * 1.5
        disk = (BYTES_PER_POINT["float32"] + vec + graph + payload) * 1.5
    return {"ram": ram, "disk": disk}


def cluster(n: int, mode: str) -> dict:
    rf = A("replication_factor")
    pp = per_point(mode)
    ram, disk = n * pp["ram"] * rf, n * pp["disk"] * rf
    node_ram = A("node_ram_gib") * GIB * A("node_ram_usable")
    node_disk = A("node_disk_gib") * GIB * A("node_disk_usable")
    nodes = max(A("min_nodes"), ceil(ram / node_ram), ceil(disk / node_disk))
    shards = max(6, A("shards_per_node") * nodes)
    return {"ram": ram, "disk": disk, "nodes": nodes, "shards": shards, "points_per_shard": n / shards,
            "bound": "RAM" if ceil(ram / node_ram) >= ceil(disk / node_disk) else "disk"}


def build(inp: Inputs) -> str:
    q = "quantization"
    out: list[str] = []
    n_bench = inp.get(q, "n")
    m = A("hnsw_m")

    out.append("### Public sources and assumptions used below\n")
    out.append("\n".join(f"- **{k}**: {v}" for k, v in SOURCES.items()))
    out.append("")
    out.append(table(["assumption", "value", "why / where from"],
                     [[k, ", ".join(map(str, v)) if isinstance(v, tuple) else v, why]
                      for k, (v, why) in ASSUMPTIONS.items()]))
    out.append("")

    # -- 1. measured: quantization ------------------------------------------------------------------------
    out.append(f"### Measured: quantization on the {n_bench:,}-point clustered benchmark (qdrant-edge)\n")
    rows = []
    for label, key in QUANT_KEYS.items():
        s = f"summary.{key}"
        rows.append([label + (" + rescore" if key != "none" else ""),
                     f"{inp.get(q, s + '.recall_at_10'):.3f}", f"{inp.get(q, s + '.recall_at_10_filtered'):.3f}",
                     f"{inp.get(q, s + '.p50_ms'):.2f}", f"{inp.get(q, s + '.disk_mib'):,.0f}",
                     f"{inp.get(q, s + '.disk_bytes_per_point'):,.0f}", f"{inp.get(q, s + '.rss_delta_mib'):,.0f}",
                     f"{inp.get(q, s + '.rss_bytes_per_point'):,.0f}", f"{inp.get(q, s + '.index_build_s'):,.0f}"])
    ef = inp.get(q, "search_ef")
    out.append(table(["setting", "recall@10", "recall@10 filtered", f"p50 ms (ef {ef})", "disk MiB",
                      "disk B/point", "RSS delta MiB", "RSS B/point", "HNSW build s"], rows))
    out.append(f"\nSource: `{inp.rel(q)}` → `summary.<none|int8|binary>.*` (m={inp.get(q, 'hnsw_m')}, "
               f"{inp.get(q, 'cpus')} shared cores). Disk = the collection folder (segments + WAL); RSS delta = "
               "the process before the store exists vs after upsert + HNSW build.\n")

    # -- 2. memory per point ------------------------------------------------------------------------------
    out.append("### Bytes per point and replica (model)\n")
    rows = []
    for mode in QUANT_KEYS:
        pp = per_point(mode)
        rows.append([mode, f"{BYTES_PER_POINT[mode]:,}", f"{graph_bytes():,}", f"{pp['ram']:,.0f}",
                     f"{pp['disk']:,.0f}"])
    out.append(table(["vectors", "vector B", f"HNSW layer-0 links B (2·m·4, m={m})", "RAM B (x1.5)",
                      "disk B (x1.5, incl. originals + payload)"], rows))
    out.append(f"\nPayload: {A('payload_bytes')} B/point (assumption). int8/binary keep the float32 originals on "
               "disk (mmap) for rescoring, so their disk grows while RAM shrinks.\n")

    # -- 3. cluster sizing ----------------------------------------------------------------------------------
    rf = A("replication_factor")
    out.append(f"### Qdrant cluster by catalogue size (replication {rf}, {A('node_ram_gib')} GiB / "
               f"{A('node_disk_gib')} GiB nodes)\n")
    rows = []
    for n in SCALES:
        for mode in QUANT_KEYS:
            c = cluster(n, mode)
            rows.append([fmt_count(n), mode, fmt_bytes(c["ram"]), fmt_bytes(c["disk"]), c["nodes"], c["bound"],
                         c["shards"], fmt_count(c["points_per_shard"])])
    out.append(table(["products", "vectors in RAM", "cluster RAM", "cluster disk", "nodes", "bound by",
                      "shard_number", "points/shard"], rows))
    out.append("")

    # -- 4. embedder fleet --------------------------------------------------------------------------------
    b = "bench"
    e = "served"
    flops_g = inp.get(e, "flops_per_image_g")
    served = inp.get(e, "summary.served_32_clients.images_per_s")
    model_only = inp.get(e, "summary.model_only_batch16.images_per_s")
    ceiling_rate = inp.get(e, "summary.ceiling.images_per_s")
    decode_ms = inp.get(e, "ceiling.start.decode_preprocess_ms_per_photo")
    cpu_util = inp.get(e, "summary.model_only_batch16.of_flop_peak")
    served_util = inp.get(e, "summary.served_32_clients.of_flop_peak")
    cores = inp.get(e, "machine.cores")
    gpu_rate = L4_FP32_TFLOPS * 1e12 * A("gpu_utilisation") / (flops_g * 1e9)
    util = A("cpu_target_utilisation")
    out.append("### Embedder throughput inputs\n")
    out.append(table(["figure", "value", "source"], [
        ["FLOPs per image (2 x MACs)", f"{flops_g:.3f} GFLOP", "`flops_per_image_g`"],
        [f"CPU model only, ONNX Runtime, batch 16, {cores} threads", f"{model_only:.1f} images/s",
         "`summary.model_only_batch16.images_per_s`"],
        [f"CPU ceiling: one process decoding + preprocessing + ORT, batch 16, {cores} cores",
         f"{ceiling_rate:.1f} images/s", "`summary.ceiling.images_per_s`"],
        [f"CPU served (TorchServe + ORT, gRPC, 32 in flight, JPEG in, {cores} cores)", f"{served:.1f} images/s",
         "`summary.served_32_clients.images_per_s`"],
        ["CPU ORT model only / served: achieved GFLOP/s / matmul peak", f"{cpu_util:.0%} / {served_util:.0%}",
         "`summary.model_only_batch16.of_flop_peak`, `summary.served_32_clients.of_flop_peak`"],
        ["decode + preprocess per image (CPU, 1 core)", f"{decode_ms:.2f} ms",
         "`ceiling.start.decode_preprocess_ms_per_photo`"],
        [f"GPU (L4) model only, DERIVED: {L4_FP32_TFLOPS} TFLOPS x {A('gpu_utilisation'):.0%} / FLOPs",
         f"{gpu_rate:,.0f} images/s", "not measured: SOURCES nvidia-l4 + assumption gpu_utilisation"],
    ]))
    out.append(f"\nSource: `{inp.rel(e)}` (bench/served.py, one run; JSON keys above). A CPU embedder pod below = "
               f"the measured served rate on {cores} cores, run at {util:.0%}; a GPU pod = one L4 at the derived "
               "rate, plus the CPU cores that decode and preprocess its JPEGs (the GPU does not decode).\n")

    pod_cpus = A("gpu_pod_cpus")
    pod_decode_rate = pod_cpus * 1000 / decode_ms  # images/s one GPU pod's CPUs can decode + preprocess

    def fleet(rate: float) -> list:
        cpu_pods = ceil(rate / (served * util))
        gpu_load = rate / gpu_rate
        decode_cores = rate * decode_ms / 1000 / util
        gpu_pods = max(ceil(gpu_load / util), ceil(rate / (pod_decode_rate * util)))
        return [f"{rate:,.1f}", cpu_pods, cpu_pods * cores, f"{gpu_load:.0%}", ceil(decode_cores), gpu_pods]

    out.append("### Embedder fleet by load\n")
    rows = []
    hours = A("reembed_hours")
    for n in SCALES:
        rows.append([f"ingest: re-embed {fmt_count(n)} in {hours} h"] + fleet(n / (hours * 3600)))
    for qps in A("query_qps"):
        for hit in A("cache_hit_rate"):
            rows.append([f"queries: {qps:,} QPS, cache hit {hit:.0%}"] + fleet(qps * (1 - hit)))
    out.append(table(["load", "images/s to embed", "CPU pods", "CPU cores", "load on one L4 (derived)",
                      "CPU cores to decode (GPU path)", f"GPU pods ({pod_cpus} CPUs + 1 L4 each)"], rows))
    out.append(f"\nA GPU pod's {pod_cpus} CPUs decode and preprocess {pod_decode_rate:,.0f} images/s at most "
               f"({pod_cpus} x 1000 / {decode_ms:.2f} ms) against ~{gpu_rate:,.0f} images/s for the L4: with "
               "this model the GPU pods are CPU-bound, so add CPUs per GPU pod (or decode on the GPU, e.g. "
               "nvJPEG/DALI) before adding GPUs. Keep at least 2 pods of either kind for availability.")
    out.append("")

    # -- 4b. gateway ---------------------------------------------------------------------------------------
    out.append("### Gateway pods by load\n")
    if "gateway" not in inp.bench.get("suites", {}):
        out.append(f"`{inp.rel(b)}` has no gateway suite: not sized here.\n")
    else:
        hit_qps = inp.get(b, "suites.gateway.latency.grpc.hit.32.qps")
        cores = inp.get(b, "machine.cores")
        out.append(f"Measured: {hit_qps:,.0f} QPS of cache-hit searches over gRPC with 32 in flight "
                   "(`suites.gateway.latency.grpc.hit.32.qps`), the whole stack (gateway, search, Redis) on the "
                   f"bench machine's {cores} cores, so a pessimistic figure for one gateway pod; misses are bounded "
                   "by the embedder fleet above, not by the gateway. HPA QPS target per pod (`averageValue` in "
                   f"`deploy/kubernetes/base/gateway.yaml`'s comment): {hit_qps * util:,.0f}.\n")
        out.append(table(["QPS", "gateway pods"], [[f"{qps:,}", max(2, ceil(qps / (hit_qps * util)))]
                                                     for qps in A("query_qps")]))
        out.append("")

    # -- 5. search CPU ----------------------------------------------------------------------------------------
    p50 = inp.get(q, "summary.none.p50_ms")
    out.append("### Search CPU by load (float32, fan-out to every shard)\n")
    rows = []
    for n in SCALES:
        c = cluster(n, "float32")
        per_query_ms = p50 * c["shards"] * max(1.0, math.log(c["points_per_shard"]) / math.log(n_bench))
        for qps in A("query_qps"):
            rows.append([fmt_count(n), c["shards"], f"{per_query_ms:,.1f}", f"{qps:,}",
                         ceil(qps * per_query_ms / 1000 / util)])
    out.append(table(["products", "shards", "CPU ms per query (all shards)", "QPS", "Qdrant cores"], rows))
    out.append(f"\nPer shard: the measured p50 at {n_bench:,} points (`{inp.rel(q)}` → `summary.none.p50_ms`, "
               f"{p50:.2f} ms single query, in-process qdrant-edge), scaled by log(points per shard) / "
               f"log({n_bench:,}) for HNSW's logarithmic search; a query visits one replica of every shard. A "
               "Qdrant server adds gRPC/REST and network time on top.\n")

    # -- 6. redis ---------------------------------------------------------------------------------------------
    r = "redis"
    entry = inp.get(r, "bytes_per_entry")
    out.append("### Redis (query-embedding cache)\n")
    out.append(f"Measured: {entry:,.0f} B per cached embedding (`{inp.rel(r)}` → `bytes_per_entry`; value "
               f"{inp.get(r, 'value_bytes'):,} B, key {inp.get(r, 'key_bytes')} B, Redis "
               f"{inp.get(r, 'redis_version')}). Every miss stores one entry, so to serve a repeat query that "
               "comes back within W hours Redis needs QPS x (1 - hit rate) x W x 3600 entries "
               "(`maxmemory` at least that, `allkeys-lru` evicts the oldest beyond it).\n")
    rows = []
    for qps in A("query_qps"):
        for hit in A("cache_hit_rate"):
            row = [f"{qps:,}", f"{hit:.0%}"]
            for w in A("cache_windows_h"):
                row.append(fmt_bytes(qps * (1 - hit) * w * 3600 * entry))
            rows.append(row)
    out.append(table(["QPS", "hit rate"] + [f"W = {w} h" for w in A("cache_windows_h")], rows))
    out.append("")

    # -- 7. re-embedding 100M ----------------------------------------------------------------------------------
    n = SCALES[-1]
    rate = n / (hours * 3600)
    c_new = cluster(n, "float32")
    build_s = inp.get(q, "summary.none.index_build_s")
    build_cpu_s = n / n_bench * build_s * inp.get(q, "cpus") * (math.log(c_new["points_per_shard"]) / math.log(n_bench))
    f = fleet(rate)
    out.append(f"### Re-embedding {fmt_count(n)} products in {hours} h\n")
    out.append(table(["quantity", "value", "from"], [
        ["images/s needed", f"{rate:,.0f}", f"{fmt_count(n)} / ({hours} x 3600 s)"],
        ["CPU embedder pods (cores)", f"{f[1]:,} ({f[2]:,})", "measured served rate, 50% utilisation"],
        ["or GPU pods: one L4 + CPUs each (derived, not measured)",
         f"{f[5]:,} pods, L4 load {f[3]}, {f[4]:,} CPU cores decoding",
         "FLOPs x assumed utilisation; decode measured; pod CPUs from overlays/gpu"],
        ["HNSW build of the new collection, CPU-hours", f"{build_cpu_s / 3600:,.0f}",
         f"`summary.none.index_build_s` x {fmt_count(n)}/{n_bench:,} x cores, x log(points/shard) ratio"],
        ["cluster RAM while both collections exist (float32 / int8)",
         f"{fmt_bytes(2 * c_new['ram'])} / {fmt_bytes(c_new['ram'] + cluster(n, 'int8')['ram'])}",
         "old + new collection, until the old one is dropped"],
    ]))
    out.append("")
    return "\n".join(out)


def render(inp: Inputs) -> str:
    body = build(inp)
    head = (f"{BEGIN} bench={inp.rel('bench')} quantization={inp.rel('quantization')} redis={inp.rel('redis')} "
            f"served={inp.rel('served')} -->\n"
            "<!-- generated by `python deploy/capacity.py --write`; do not edit by hand -->\n")
    keys = "\n".join(f"- `{inp.rel(w)}` → `{d}` = {json.dumps(v) if not isinstance(v, float) else round(v, 4)}"
                     for w, d, v in inp.cited)
    return (head + body + "\n<details><summary>Every input read from the JSON files</summary>\n\n" + keys
            + "\n\n</details>\n" + END)


def block_of(md: str) -> str | None:
    start = md.find(BEGIN)
    end = md.find(END)
    if start < 0 or end < 0:
        return None
    return md[start:end + len(END)]


def sources_of(block: str) -> dict[str, Path]:
    first = block.splitlines()[0]
    out = {}
    for part in first.split():
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = REPO / v
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", type=Path)
    parser.add_argument("--quantization", type=Path, default=RESULTS / "quantization.json")
    parser.add_argument("--redis", type=Path, default=RESULTS / "redis_entry.json")
    parser.add_argument("--served", type=Path, default=RESULTS / "served.json")
    parser.add_argument("--md", type=Path, default=CAPACITY_MD)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="replace the generated block in --md")
    mode.add_argument("--check", action="store_true", help="compare --md's block with a run on the files it names")
    args = parser.parse_args(argv)
    if args.check:
        md = args.md.read_text()
        block = block_of(md)
        if block is None:
            print(f"{args.md}: no generated block", file=sys.stderr)
            return 1
        src = sources_of(block)
        fresh = render(Inputs(src["bench"], src["quantization"], src["redis"], src["served"]))
        if fresh != block:
            print(f"{args.md}: tables differ from `deploy/capacity.py` on {', '.join(map(str, src.values()))}; "
                  "run `python deploy/capacity.py --write`", file=sys.stderr)
            return 1
        print("ok: CAPACITY.md matches the benchmark JSON")
        return 0
    inp = Inputs(args.bench or default_bench(), args.quantization, args.redis, args.served)
    text = render(inp)
    if args.write:
        md = args.md.read_text()
        old = block_of(md)
        if old is None:
            raise SystemExit(f"{args.md}: add a line `{BEGIN} -->` and a line `{END}` where the tables go")
        args.md.write_text(md.replace(old, text))
        print(f"wrote the tables into {args.md}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
