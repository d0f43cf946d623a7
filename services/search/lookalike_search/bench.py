"""Quick benchmark of a store configuration on synthetic clustered embeddings.

    python -m lookalike_search.bench --n 10000 --engine qdrant-edge [--quantization int8] ...

Data: a mixture of Gaussians on the unit sphere (d=1280 by default): `clusters` random unit centres,
each point = normalise(centre + noise) with noise of norm ~`spread`, so same-cluster points have cosine
~1/(1+spread^2) and the top-10 is a real nearest-neighbour problem inside a cluster. Queries are fresh
draws from the same mixture (not stored points). Each point gets one of 10 categories and a price in
[0, 1000); the filtered run asks for one category with price <= 500 (~5% of the points).

Measures upsert rate (acknowledged, durable writes through VectorStore.upsert), the index build
(qdrant-edge optimize), query latency p50/p99 and recall@k against exact numpy cosine top-k, with and
without the filter. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import engines
from .settings import ENGINES, SearchSettings
from .store import SearchFilter, VectorStore

CATEGORIES = [f"cat{i}" for i in range(10)]


def clustered_unit_vectors(n: int, dim: int, clusters: int, spread: float, rng: np.random.Generator,
                           centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors from a mixture of `clusters` Gaussians on the sphere; returns (vectors, centres)."""
    if centres is None:
        centres = rng.standard_normal((clusters, dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):  # chunks keep the float64 temporaries small
        stop = min(n, start + 8192)
        assign = rng.integers(0, len(centres), stop - start)
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        block = centres[assign] + noise
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out, centres


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[np.ndarray]:
    """Exact cosine top-k indices (vectors and queries are unit)."""
    result = []
    for q in queries:
        scores = vectors @ q
        if mask is not None:
            scores = np.where(mask, scores, -np.inf)
        top = np.argpartition(-scores, k)[:k]
        top = top[np.argsort(-scores[top])]
        result.append(top[np.isfinite(scores[top])])
    return result


def _latency(store: VectorStore, queries: np.ndarray, k: int, flt: SearchFilter | None, ids: list[str],
             truth: list[np.ndarray]) -> dict:
    for q in queries[:5]:  # warm-up
        store.search(q, k, flt)
    times, recalls = [], []
    for q, expected in zip(queries, truth):
        start = time.perf_counter()
        hits = store.search(q, k, flt)
        times.append(time.perf_counter() - start)
        want = {ids[i] for i in expected}
        if want:
            recalls.append(len(want & {h.product_id for h in hits}) / len(want))
    ms = np.array(times) * 1000
    return {"queries": len(queries), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3),
            f"recall_at_{k}": round(float(np.mean(recalls)), 4)}


def run(engine: str = "qdrant-edge", n: int = 10_000, dim: int = 1280, queries: int = 200, top_k: int = 10,
        clusters: int = 100, spread: float = 1.0, batch: int = 256, seed: int = 0, data_dir: str | None = None,
        qdrant_url: str | None = None, quantization: str = "none", hnsw_m: int = 16, hnsw_ef_construct: int = 100,
        search_ef: int = 128, edge_flush_each_write: bool = True, keep: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    vectors, centres = clustered_unit_vectors(n, dim, clusters, spread, rng)
    query_vecs, _ = clustered_unit_vectors(queries, dim, clusters, spread, rng, centres)
    categories = rng.integers(0, len(CATEGORIES), n)
    prices = np.round(rng.uniform(0, 1000, n), 2)
    ids = [f"bench-{i}" for i in range(n)]
    gen_s = time.perf_counter() - t0

    tmp = None
    if engine != "qdrant-server" and data_dir is None:
        tmp = data_dir = tempfile.mkdtemp(prefix="lookalike-bench-")
    env = dict(engine=engine, vector_size=dim, quantization=quantization, hnsw_m=hnsw_m,
               hnsw_ef_construct=hnsw_ef_construct, search_ef=search_ef, edge_optimize_idle_s=0,
               edge_flush_each_write=edge_flush_each_write, collection=f"bench_{n}_{dim}")
    if data_dir:
        env["data_dir"] = Path(data_dir)
    if qdrant_url:
        env["qdrant_url"] = qdrant_url
    settings = SearchSettings(**env)
    store = engines.make_store(settings)
    try:
        store.ensure_collection()
        start = time.perf_counter()
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            store.upsert([(ids[i], vectors[i], {"category": CATEGORIES[categories[i]], "price": float(prices[i])})
                          for i in range(lo, hi)])
        upsert_s = time.perf_counter() - start
        index_s = None
        if hasattr(store, "optimize"):  # qdrant-edge: build the HNSW segments explicitly
            start = time.perf_counter()
            store.optimize()
            index_s = time.perf_counter() - start
        count = store.count()

        flt = SearchFilter(category=CATEGORIES[3], max_price=500.0)
        mask = (categories == 3) & (prices <= 500.0)
        truth = exact_top_k(vectors, query_vecs, top_k)
        truth_f = exact_top_k(vectors, query_vecs, top_k, mask)
        result = {
            "engine": engine, "n": n, "dim": dim, "clusters": clusters, "spread": spread, "top_k": top_k,
            "quantization": quantization, "hnsw_m": hnsw_m, "hnsw_ef_construct": hnsw_ef_construct,
            "search_ef": search_ef, "batch": batch, "count": count, "generate_s": round(gen_s, 2),
            "upsert_s": round(upsert_s, 2), "upsert_points_per_s": round(n / upsert_s, 1),
            "index_build_s": None if index_s is None else round(index_s, 2),
            "unfiltered": _latency(store, query_vecs, top_k, None, ids, truth),
            "filtered": {"filter": "category=cat3 AND price<=500", "selectivity": round(float(mask.mean()), 4),
                         **_latency(store, query_vecs, top_k, flt, ids, truth_f)},
            "cpus": os.cpu_count(),
        }
        if hasattr(store, "info"):
            result["edge_info"] = store.info()
        return result
    finally:
        store.close()
        if tmp and not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lookalike_search.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="qdrant-edge", choices=ENGINES)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm relative to the unit centre")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quantization", default="none", choices=["none", "int8", "binary"])
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construct", type=int, default=100)
    parser.add_argument("--search-ef", type=int, default=128)
    parser.add_argument("--no-flush", action="store_true", help="edge: rely on the WAL only (no flush per write)")
    parser.add_argument("--data-dir", help="store here (default: a temporary folder, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    parser.add_argument("--qdrant-url", help="server engine: Qdrant URL")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    result = run(engine=args.engine, n=args.n, dim=args.dim, queries=args.queries, top_k=args.top_k,
                 clusters=args.clusters, spread=args.spread, batch=args.batch, seed=args.seed,
                 data_dir=args.data_dir, qdrant_url=args.qdrant_url, quantization=args.quantization,
                 hnsw_m=args.hnsw_m, hnsw_ef_construct=args.ef_construct, search_ef=args.search_ef,
                 edge_flush_each_write=not args.no_flush, keep=args.keep)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
