"""Retrieval quality on clothing-small: train split as the catalogue, test photos as queries.

Measures P@1, P@5, P@10 and mAP@100 (a) by brute-force cosine search over Lite0 features computed in-process
and (b) through the served chain (REST /v1/search on a real stack). The two must agree.

    python bench/quality.py [--dataset DIR] [--served] [--gateway-url URL --grpc ADDR] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see lookalike/torchserve_process.py
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import DEFAULT_DATASET, list_split  # noqa: E402,F401  (re-exported: several suites import them from here)

RANK_DEPTH = 100


def retrieval_metrics(ranked_labels: list[list[str]], query_labels: list[str],
                      relevant_counts: list[int]) -> dict[str, float]:
    """P@1/5/10 and mAP@RANK_DEPTH; `ranked_labels[i]` are the labels of query i's results, best first."""
    p = {k: [] for k in (1, 5, 10)}
    aps = []
    for labels, truth, n_relevant in zip(ranked_labels, query_labels, relevant_counts):
        hits = np.array([label == truth for label in labels[:RANK_DEPTH]], dtype=float)
        for k in p:
            p[k].append(hits[:k].mean() if len(hits) >= k else hits.sum() / k)
        precision_at_hit = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        denominator = min(n_relevant, RANK_DEPTH)
        aps.append(float((precision_at_hit * hits).sum() / denominator) if denominator else 0.0)
    return {"p@1": float(np.mean(p[1])), "p@5": float(np.mean(p[5])), "p@10": float(np.mean(p[10])),
            f"map@{RANK_DEPTH}": float(np.mean(aps)), "queries": len(query_labels)}


def embed_paths(paths: list[Path], cut: str = "final", batch_size: int = 32) -> np.ndarray:
    """Features of image files, decoded exactly as the service decodes uploads (lookalike.images.decode_image:
    EXIF orientation applied, alpha on white). Plain `Image.open(p).convert("RGB")` ignores EXIF orientation,
    so rotated phone photos got other vectors than through the API."""
    from lookalike.images import decode_image
    from lookalike_embedder.model import FeatureExtractor

    extractor = FeatureExtractor(cut=cut)
    out = []
    for start in range(0, len(paths), batch_size):
        images = [decode_image(p.read_bytes()) for p in paths[start:start + batch_size]]
        out.append(extractor.embed_images(images))
        print(f"\r  embedded {min(start + batch_size, len(paths))}/{len(paths)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return np.concatenate(out)


def brute_force(dataset: Path, cut: str = "final", cache_dir: Path | None = None) -> dict:
    """Exact cosine search over in-process features."""
    cat_paths, cat_labels = list_split(dataset, "train")
    query_paths, query_labels = list_split(dataset, "test")
    cache = (cache_dir / f"features-decode_image-{cut}.npz") if cache_dir else None
    if cache and cache.exists():
        data = np.load(cache)
        catalogue, queries = data["catalogue"], data["queries"]
    else:
        catalogue, queries = embed_paths(cat_paths, cut), embed_paths(query_paths, cut)
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, catalogue=catalogue, queries=queries)
    scores = queries @ catalogue.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :RANK_DEPTH]
    ranked = [[cat_labels[j] for j in row] for row in order]
    counts = {label: cat_labels.count(label) for label in set(cat_labels)}
    return retrieval_metrics(ranked, query_labels, [counts[label] for label in query_labels])


def search_rest(http_url: str, paths: list[Path], top_k: int, **form: str) -> list[list[dict]]:
    """Each photo through REST /v1/search (extra `form` fields, e.g. category_boost="0"): its results, best first.
    Checks that no answer repeats a product (search answers with distinct products)."""
    import httpx

    answers = []
    with httpx.Client(base_url=http_url, timeout=120) as client:
        for path in paths:
            response = client.post("/v1/search", files={"image": (path.name, path.read_bytes(), "image/jpeg")},
                                   data={"top_k": str(top_k), **form})
            response.raise_for_status()
            results = response.json()["results"]
            assert len({r["id"] for r in results}) == len(results), f"the answer to {path.name} repeats a product"
            answers.append(results)
    return answers


def served(dataset: Path, http_url: str, grpc_address: str, index: bool = True) -> dict:
    """Indexes the train split through gRPC, then queries every test photo through REST."""
    from lookalike.catalogue_reader import scan_folder
    from lookalike.ingest import index_items

    result: dict = {}
    if index:
        report = index_items(grpc_address, scan_folder(dataset / "train"), progress=sys.stderr.isatty())
        result["indexed"] = report.indexed
        result["index_failed"] = report.failed
        result["index_images_per_s"] = round(report.rate, 2)
    query_paths, query_labels = list_split(dataset, "test")
    cat_labels = list_split(dataset, "train")[1]
    counts = {label: cat_labels.count(label) for label in set(cat_labels)}
    started = time.perf_counter()
    answers = search_rest(http_url, query_paths, RANK_DEPTH)
    ranked = [[r["category"] for r in results] for results in answers]
    result["query_seconds"] = round(time.perf_counter() - started, 2)
    result.update(retrieval_metrics(ranked, query_labels, [counts[label] for label in query_labels]))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--cut", default="final")
    parser.add_argument("--served", action="store_true", help="also measure through a real stack")
    parser.add_argument("--gateway-url", help="use a running gateway (REST URL) instead of starting a stack")
    parser.add_argument("--grpc", help="gRPC address of that gateway")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    figures = {"dataset": str(args.dataset), "brute_force": brute_force(args.dataset, args.cut,
                                                                       ROOT / "bench" / "results")}
    print("brute force:", json.dumps(figures["brute_force"]))
    if args.served or args.gateway_url:
        if args.gateway_url:
            figures["served"] = served(args.dataset, args.gateway_url, args.grpc)
        else:
            import tempfile

            from lookalike.stack import Stack, StackConfig
            with tempfile.TemporaryDirectory() as tmp, Stack(StackConfig(data_dir=Path(tmp), http_port=0,
                                                                         grpc_port=0)) as stack:
                figures["served"] = served(args.dataset, stack.http_url, stack.grpc_address)
        print("served:     ", json.dumps(figures["served"]))
        for key in ("p@1", "p@5", "p@10"):
            figures[f"{key}_difference"] = round(figures["served"][key] - figures["brute_force"][key], 4)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
