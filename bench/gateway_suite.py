"""Gateway suite: a real Stack (redis, TorchServe, search service, gateway as processes); ingest rate, served
quality against brute force on the same catalogue, and query latency / QPS at several concurrencies for cache
misses (photos never queried: validation photos, then 1-4 px crops / mirrors of other photos, re-encoded) and
cache hits (the same bytes again), over gRPC (SearchByImage) and REST (POST /v1/search, multipart).
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402

from common import every_nth, latency_stats, list_split, load_now, perturbed_jpeg, summarize  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import RANK_DEPTH, retrieval_metrics  # noqa: E402

CONCURRENCY = (1, 8, 32)


def log(msg: str) -> None:
    print(f"[gateway] {msg}", flush=True)


class Querier:
    """Sends SearchByImage (gRPC) or POST /v1/search (REST) from `concurrency` threads."""

    def __init__(self, stack):
        import grpc

        from lookalike.grpc_channel import CLIENT_OPTIONS
        from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc

        self.pb2 = lookalike_pb2
        self.channel = grpc.insecure_channel(stack.grpc_address, options=CLIENT_OPTIONS)
        self.stub = lookalike_pb2_grpc.LookalikeStub(self.channel)
        self.http_url = stack.http_url
        self.local = threading.local()

    def grpc_one(self, image: bytes, top_k: int) -> tuple[float, bool, list]:
        started = time.perf_counter()
        response = self.stub.SearchByImage(self.pb2.SearchByImageRequest(image=image, top_k=top_k), timeout=120)
        return time.perf_counter() - started, response.cache_hit, [r.product.id for r in response.results]

    def rest_one(self, image: bytes, top_k: int) -> tuple[float, bool, list]:
        import httpx

        client = getattr(self.local, "client", None)
        if client is None:
            from embedder_suite import nodelay_transport
            client = self.local.client = httpx.Client(base_url=self.http_url, timeout=120,
                                                      transport=nodelay_transport())
        started = time.perf_counter()
        response = client.post("/v1/search", files={"image": ("q.jpg", image, "image/jpeg")},
                               data={"top_k": str(top_k)})
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        body = response.json()
        return elapsed, body["cache_hit"], body["results"]

    def burst(self, proto: str, images: list[bytes], concurrency: int, top_k: int = 10) -> dict:
        one = self.grpc_one if proto == "grpc" else self.rest_one
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            out = list(pool.map(lambda img: one(img, top_k), images))
        wall = time.perf_counter() - started
        stats = latency_stats([o[0] for o in out])
        stats["qps"] = round(len(images) / wall, 2)
        stats["cache_hits"] = sum(1 for o in out if o[1])
        return stats

    def close(self) -> None:
        self.channel.close()


def miss_pool(dataset: Path, needed: int, seen: set[Path]) -> list[bytes]:
    """`needed` distinct image payloads never sent before: validation photos, then perturbed copies."""
    val, _ = list_split(dataset, "validation")
    pool = [p.read_bytes() for p in val if p not in seen][:needed]
    others = list_split(dataset, "test")[0] + list_split(dataset, "train")[0]
    i = 0
    while len(pool) < needed:
        pool.append(perturbed_jpeg(others[i % len(others)].read_bytes(), seed=1000 + i))
        i += 1
    return pool


def served_quality(querier: Querier, cat_items, query_paths, query_labels) -> dict:
    """REST top-100 for every query vs brute force (same catalogue, same decode path, cached torch features)."""
    from quality_suite import served_reference

    cat_ids = [item.product.id for item in cat_items]
    cat_labels = [item.product.category for item in cat_items]
    counts = {label: cat_labels.count(label) for label in set(cat_labels)}
    rel = [counts[label] for label in query_labels]
    depth = min(RANK_DEPTH, len(cat_items))
    served_ids, lat = [], []
    started = time.perf_counter()
    for path in query_paths:
        elapsed, _hit, results = querier.rest_one(path.read_bytes(), depth)
        served_ids.append([r["id"] for r in results])
        lat.append(elapsed)
    seconds = time.perf_counter() - started
    id_label = dict(zip(cat_ids, cat_labels))
    served = retrieval_metrics([[id_label[i] for i in row] for row in served_ids], query_labels, rel)
    order = served_reference(None, [item.image_path for item in cat_items], query_paths)[:, :depth]
    brute_ids = [[cat_ids[j] for j in row] for row in order]
    brute = retrieval_metrics([[id_label[i] for i in row] for row in brute_ids], query_labels, rel)
    top1_same = float(np.mean([a[:1] == b[:1] for a, b in zip(served_ids, brute_ids)]))
    top10_overlap = float(np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(served_ids, brute_ids)]))
    diff = {k: round(served[k] - brute[k], 5) for k in ("p@1", "p@5", "p@10", f"map@{RANK_DEPTH}")}
    return {"catalogue": len(cat_items), "queries": len(query_paths), "served": served, "brute_force": brute,
            "difference": diff, "match_3_decimals": all(round(served[k], 3) == round(brute[k], 3) for k in diff),
            "top1_same_product": round(top1_same, 4), "top10_overlap": round(top10_overlap, 4),
            "query_seconds": round(seconds, 1), "rest_sequential_miss": latency_stats(lat)}


def served_category_rerank(querier: Querier, cat_items, query_paths, query_labels) -> dict:
    """Trains the category classifier through the service (POST /v1/classifiers, its defaults), then
    measures the queries again through REST with the default category boost (lookalike_gateway.ranking).
    The query embeddings are cached by then, so this costs searches, not embeddings."""
    import httpx

    with httpx.Client(base_url=querier.http_url, timeout=600) as client:
        started = time.perf_counter()
        response = client.post("/v1/classifiers", json={})
        response.raise_for_status()
        report = response.json()
        train_s = time.perf_counter() - started
    cat_labels = [item.product.category for item in cat_items]
    counts = {label: cat_labels.count(label) for label in set(cat_labels)}
    ranked, boosts = [], set()
    for path in query_paths:
        _elapsed, _hit, results = querier.rest_one(path.read_bytes(), min(RANK_DEPTH, len(cat_items)))
        ranked.append([r["category"] for r in results])
    with httpx.Client(base_url=querier.http_url, timeout=60) as client:  # the boost the server applied
        path = query_paths[0]
        boosts.add(client.post("/v1/search", files={"image": (path.name, path.read_bytes(), "image/jpeg")},
                               data={"top_k": "1"}).json()["category_boost"])
    return {"classifier_accuracy_holdout": round(report["accuracy"], 4), "classifier_c": report["c"],
            "train_seconds": round(train_s, 1), "category_boost": sorted(boosts),
            "served": retrieval_metrics(ranked, query_labels, [counts[label] for label in query_labels])}


def run(dataset: Path, quick: bool, repeats: int) -> dict:
    from lookalike.catalogue_reader import scan_folder
    from lookalike.ingest import index_items
    from lookalike.stack import Stack, StackConfig

    result: dict = {"load_at_start": load_now()}
    items = scan_folder(dataset / "train")
    if quick:
        items = [items[i] for i in every_nth(items, 200)]
    test_paths, test_labels = list_split(dataset, "test")
    if quick:
        keep = every_nth(test_paths, 60)
        test_paths, test_labels = [test_paths[i] for i in keep], [test_labels[i] for i in keep]
    n_miss = {1: 12, 8: 16, 32: 32} if quick else {1: 24, 8: 48, 32: 96}
    with tempfile.TemporaryDirectory(prefix="lkb-stack-") as tmp:
        started = time.perf_counter()
        stack = Stack(StackConfig(data_dir=Path(tmp), http_port=0, grpc_port=0))
        stack.start()
        result["stack_start_s"] = round(time.perf_counter() - started, 1)
        try:
            log(f"stack up in {result['stack_start_s']} s; indexing {len(items)} photos")
            report = index_items(stack.grpc_address, items, progress=False)
            result["ingest"] = {"images": report.indexed, "failed": report.failed, "seconds": round(report.seconds, 1),
                                "images_per_s": round(report.rate, 2), "engine": stack.search_engine}
            log(f"ingest {report.rate:.1f} images/s; served quality on {len(test_paths)} test photos")
            querier = Querier(stack)
            result["served_quality"] = served_quality(querier, items, test_paths, test_labels)
            log(f"served vs brute force: {result['served_quality']['difference']}")
            needed = repeats * 2 * sum(n_miss.values()) + 8
            pool = miss_pool(dataset, needed, set(test_paths))
            for img in pool[-8:]:  # warm-up (not measured)
                querier.grpc_one(img, 10)
            pool = pool[:-8]
            runs: dict = {}
            k = 0
            for rep in range(repeats):
                for conc in CONCURRENCY:
                    for proto in ("grpc", "rest"):
                        n = n_miss[conc]
                        images = pool[k:k + n]
                        k += n
                        miss = querier.burst(proto, images, conc)
                        hit_images = (images * 4)[:max(2 * n, 64)]
                        hit = querier.burst(proto, hit_images, conc)
                        runs.setdefault((proto, conc, "miss"), []).append(miss)
                        runs.setdefault((proto, conc, "hit"), []).append(hit)
                        log(f"rep {rep + 1} {proto} c={conc}: miss p50 {miss['p50_ms']} ms {miss['qps']} qps "
                            f"(hits {miss['cache_hits']}/{n}); hit p50 {hit['p50_ms']} ms {hit['qps']} qps "
                            f"(hits {hit['cache_hits']}/{len(hit_images)})")
            # last: a trained classifier changes the order (and the work) of every later image search
            result["served_category_rerank"] = served_category_rerank(querier, items, test_paths, test_labels)
            log(f"category re-ranking served: {result['served_category_rerank']}")
            querier.close()
        finally:
            stack.stop()
    latency: dict = {}
    for (proto, conc, kind), figures in runs.items():
        entry = {key: summarize([f[key] for f in figures]) for key in ("p50_ms", "p95_ms", "p99_ms", "qps")}
        entry["requests_per_run"] = figures[0]["n"]
        entry["cache_hit_fraction"] = round(sum(f["cache_hits"] for f in figures) / sum(f["n"] for f in figures), 3)
        latency.setdefault(proto, {}).setdefault(kind, {})[str(conc)] = entry
    result["latency"] = latency
    return result
