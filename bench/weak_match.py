"""Does the gateway's "no close match" threshold hold on photos it was not calibrated on? (clothing-small)

Calibrate exactly as the gateway does (lookalike_gateway.weak_match: leave each catalogue product out, its nearest
other product, isotonic P(same category) >= 1/2) on the train split as the catalogue -- once over every product and
over several 2,000-product samples (the gateway's MAX_SAMPLE; how much the figure moves between samples) -- then search with every validation photo (held out;
never the test split) and report how many answers fall below the threshold and how often the best result shares the
query's category above and below it. Offline features (bench/quality.embed_paths), brute force.

    .venv/bin/python bench/weak_match.py [--json bench/results/weak_match.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from lookalike_gateway.calibration import MAX_SAMPLE
from lookalike_gateway.weak_match import weak_match_score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import DEFAULT_DATASET  # noqa: E402  (bench/ is on sys.path when a bench runs)


def calibrate(catalogue: np.ndarray, labels: np.ndarray, sample: np.ndarray) -> float:
    scores = catalogue[sample] @ catalogue.T
    scores[np.arange(len(sample)), sample] = -np.inf  # leave the product itself out
    nearest = scores.argmax(axis=1)
    return weak_match_score(scores[np.arange(len(sample)), nearest], labels[nearest] == labels[sample])


def split_at(threshold: float, top: np.ndarray, same: np.ndarray) -> dict:
    below = top < threshold
    return {"threshold": round(threshold, 4), "queries_below": round(float(below.mean()), 4),
            "top1_same_category_above": round(float(same[~below].mean()), 4) if (~below).any() else None,
            "top1_same_category_below": round(float(same[below].mean()), 4) if below.any() else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "weak_match.json")
    parser.add_argument("--samples", type=int, default=5, help="2,000-product samples drawn (seeds 0..n-1)")
    parser.add_argument("--features", type=Path, help="an .npz to keep the features in between runs (not committed)")
    args = parser.parse_args()
    from quality import embed_paths, list_split

    cat_paths, cat_labels = list_split(args.dataset, "train")
    query_paths, query_labels = list_split(args.dataset, "validation")
    if args.features and args.features.exists():
        data = np.load(args.features)
        catalogue, queries = data["catalogue"], data["queries"]
    else:
        catalogue, queries = embed_paths(cat_paths), embed_paths(query_paths)
        if args.features:
            np.savez(args.features, catalogue=catalogue, queries=queries)
    cat_labels, query_labels = np.array(cat_labels), np.array(query_labels)
    scores = queries @ catalogue.T
    best = scores.argmax(axis=1)
    top, same = scores[np.arange(len(queries)), best], cat_labels[best] == query_labels
    every = np.arange(len(catalogue))
    size = min(MAX_SAMPLE, len(every))
    samples = [np.sort(np.random.default_rng(seed).choice(every, size=size, replace=False))
               for seed in range(args.samples)]
    result = {"catalogue": f"clothing-small train ({len(catalogue)} products)",
              "queries": f"clothing-small validation ({len(queries)} photos)",
              "top1_same_category_all": round(float(same.mean()), 4),
              "every_product": split_at(calibrate(catalogue, cat_labels, every), top, same),
              f"samples_of_{size}": [split_at(calibrate(catalogue, cat_labels, s), top, same) for s in samples]}
    print(json.dumps(result, indent=2))
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
