"""Benchmark of the served chain, all figures from one run (the machine is shared and noisy: compare ratios).

Prints and writes JSON with:
  - model-only images/s (forward pass, eager PyTorch) at batch 1 and the best of 8/16/32
  - end-to-end ingest images/s (lookalike index over gRPC: gateway -> TorchServe -> search service)
  - query latency p50/p99 (top 10, the default) through REST and through gRPC: cache misses (first time a
    photo is seen: test photos over REST, validation photos over gRPC), each right after the model alone
    at batch 1 on the same photo (the miss target is model batch-1 latency + 25 ms: measured side by side,
    the machine's load moves both alike), then cache hits
  - retrieval quality through the served API (P@1/5/10, mAP@100) on clothing-small

    python bench/chain.py [--dataset DIR] [--catalogue-limit N] [--json bench/results/chain.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see lookalike/torchserve_process.py
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import DEFAULT_DATASET, list_split, retrieval_metrics  # noqa: E402


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2), "n": len(ms)}


def query_latencies(http_url: str, photos: list[Path], top_k: int = 10) -> tuple[list[float], list[dict]]:
    import httpx

    latencies, bodies = [], []
    with httpx.Client(base_url=http_url, timeout=60) as client:
        for photo in photos:
            data = photo.read_bytes()
            started = time.perf_counter()
            response = client.post("/v1/search", files={"image": (photo.name, data, "image/jpeg")},
                                   data={"top_k": str(top_k)})
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
            bodies.append(response.json())
    return latencies, bodies


def rest_query(http, photo: Path, expect_hit: bool) -> float:
    """Seconds for POST /v1/search (top 10) of `photo`; checks that it was (not) a cache hit."""
    started = time.perf_counter()
    response = http.post("/v1/search", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
                         data={"top_k": "10"})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    assert response.json()["cache_hit"] == expect_hit, photo
    return elapsed


def grpc_query(stub, photo: Path, expect_hit: bool) -> float:
    """Seconds for SearchByImage (top 10) of `photo`; checks that it was (not) a cache hit."""
    from lookalike.v1 import lookalike_pb2

    request = lookalike_pb2.SearchByImageRequest(image=photo.read_bytes(), top_k=10)
    started = time.perf_counter()
    response = stub.SearchByImage(request, timeout=60)
    elapsed = time.perf_counter() - started
    assert response.cache_hit == expect_hit, photo
    return elapsed


class ModelAlone:
    """The forward pass at batch 1 on one photo's preprocessed input, in this process, with the served
    backend (ONNX Runtime, as the TorchServe handler runs it)."""

    def __init__(self):
        from lookalike_embedder.model import FeatureExtractor

        self.fx = FeatureExtractor("cpu", backend="onnxruntime")

    def seconds(self, photo: Path) -> float:
        import torch

        from lookalike_embedder.preprocessing import prepare

        batch = torch.from_numpy(prepare(photo.read_bytes())[None])
        started = time.perf_counter()
        self.fx.embed_batch(batch)
        return time.perf_counter() - started


def interleaved(model: ModelAlone, photos: list[Path], query) -> tuple[list[float], list[float]]:
    """For each photo: the model alone at batch 1, then `query(photo)` (a cache miss through the chain),
    one right after the other, so the machine's other load moves both alike. Returns both latency lists."""
    model_s, query_s = [], []
    for photo in photos:
        model_s.append(model.seconds(photo))
        query_s.append(query(photo))
    return model_s, query_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--catalogue-limit", type=int, default=0, help="index only the first N training photos")
    parser.add_argument("--engine", default="qdrant-edge", choices=["qdrant-edge", "qdrant-local"])
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "chain.json")
    args = parser.parse_args()

    from lookalike.catalogue_reader import scan_folder
    from lookalike.ingest import index_items
    from lookalike.stack import Stack, StackConfig
    from lookalike_embedder.bench import benchmark_model

    figures: dict = {"engine": args.engine, "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                 "cpus": __import__("os").cpu_count()}}
    print("model-only (eager PyTorch, forward pass; best of 3 after 3 warm-up batches):", flush=True)
    # the first batches of a fresh process run up to 1.6x slower: without warm-up the batch-1 latency
    # (the yardstick of the miss target) came out at 84 ms instead of ~50 ms
    model = benchmark_model((1, 8, 16, 32), n_images=64, warmup=3, repeats=3)
    best_batch = max((b for b in model if b > 1), key=model.get)
    figures["model_only"] = {"images_per_s": {str(b): round(v, 2) for b, v in model.items()},
                             "batch1_latency_ms": round(1000 / model[1], 2), "best_batch": best_batch}

    items = scan_folder(args.dataset / "train")
    if args.catalogue_limit:
        items = items[:args.catalogue_limit]
    query_photos, query_labels = list_split(args.dataset, "test")
    with tempfile.TemporaryDirectory() as tmp, Stack(StackConfig(data_dir=Path(tmp), http_port=0, grpc_port=0,
                                                                 search_engine=args.engine)) as stack:
        print(f"ingest: {len(items)} photos through the gateway ...", flush=True)
        report = index_items(stack.grpc_address, items, progress=sys.stderr.isatty())
        figures["ingest"] = {"images": report.indexed, "failed": report.failed, "seconds": round(report.seconds, 2),
                             "images_per_s": round(report.rate, 2),
                             "ratio_to_model_only_best_batch": round(report.rate / model[best_batch], 3)}
        import grpc

        from lookalike.grpc_channel import CLIENT_OPTIONS
        import httpx

        from lookalike.v1 import lookalike_pb2_grpc

        alone = ModelAlone()
        for photo in query_photos[:8]:
            alone.seconds(photo)  # warm-up: a fresh process runs its first batches slower
        http = httpx.Client(base_url=stack.http_url, timeout=60)
        channel = grpc.insecure_channel(stack.grpc_address, options=CLIENT_OPTIONS)
        stub = lookalike_pb2_grpc.LookalikeStub(channel)
        grpc_photos = list_split(args.dataset, "validation")[0]
        print(f"cache misses: {len(query_photos)} test photos over REST, {len(grpc_photos)} validation photos over "
              "gRPC, each right after the model alone at batch 1 on the same photo ...", flush=True)
        protocols = (("rest", query_photos, lambda photo, hit: rest_query(http, photo, hit)),
                     ("grpc", grpc_photos, lambda photo, hit: grpc_query(stub, photo, hit)))
        for name, photos, query in protocols:
            model_s, miss_s = interleaved(alone, photos, lambda photo: query(photo, False))
            figures[f"{name}_miss"] = {
                "query": percentiles(miss_s), "model_alone_batch1": percentiles(model_s),
                "p50_query_minus_model_ms": round(float(np.percentile(np.subtract(miss_s, model_s) * 1000, 50)), 2)}
        print("cache hits: the same photos again ...", flush=True)
        for name, photos, query in protocols:
            figures[f"{name}_hit"] = percentiles([query(photo, True) for photo in photos])
        http.close()
        channel.close()
        print("quality: the test photos again, top 100 (cached embeddings) ...", flush=True)
        _, bodies = query_latencies(stack.http_url, query_photos, top_k=100)
        cat_labels = [item.product.category for item in items]
        counts = {label: cat_labels.count(label) for label in set(cat_labels)}
        ranked = [[r["category"] for r in body["results"]] for body in bodies]
        figures["served_quality"] = retrieval_metrics(ranked, query_labels, [counts.get(lab, 0) for lab in query_labels])
    print(json.dumps(figures, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
