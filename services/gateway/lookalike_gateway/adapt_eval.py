"""Held-out splits and retrieval figures of an adaptation (numpy only).

Photos carry a group label (a product id, or a category / attribute value). An adaptation is judged on
two kinds of held-out queries, never used by the fit:

* **seen**: held-out photos of groups the fit saw (split by photo: one photo of each group with >= 3 photos);
* **unseen**: groups left out of the fit entirely (split by group: one photo of each is the query, the
  others stay in the gallery).

The gallery is every other photo (the catalogue as searched). Figures: P@1 and R@5 over distinct groups
(search results collapse to distinct products: a group scores as its best photo), mAP@100 over photos.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RANK_DEPTH = 100
QUERY_CHUNK = 256


@dataclass
class Split:
    fit: np.ndarray        # photo indices the fit may use
    seen: np.ndarray       # held-out photos of groups in the fit (queries)
    unseen: np.ndarray     # one photo of each held-out group (queries)
    gallery: np.ndarray    # everything but the queries

    def sizes(self) -> dict:
        return {"fit_photos": int(self.fit.size), "seen_queries": int(self.seen.size),
                "unseen_queries": int(self.unseen.size), "gallery": int(self.gallery.size)}


def make_split(labels, group_holdout: float = 0.2, seed: int = 0, max_queries: int = 1000,
               photo_holdout: float = 0.2) -> Split:
    """Groups with >= 2 photos: a `group_holdout` share left out of the fit (one query each); of the
    others, groups with >= 3 photos give a `photo_holdout` share of their photos (at least one) as
    held-out queries. At most `max_queries` of each kind."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    groups, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    multi = np.flatnonzero(counts >= 2)
    n_out = int(round(len(multi) * group_holdout))
    out = set(rng.permutation(multi)[:n_out].tolist()) if len(multi) >= 4 and n_out else set()
    by_group: dict[int, list[int]] = {}
    for i in rng.permutation(len(labels)):
        by_group.setdefault(int(inverse[i]), []).append(int(i))
    fit, seen, unseen = [], [], []
    for g, members in by_group.items():
        if g in out:
            unseen.append(members[0])
        elif counts[g] >= 3:
            n_held = max(1, int(photo_holdout * counts[g]))
            seen += members[:n_held]
            fit += members[n_held:]
        else:
            fit += members
    seen = rng.permutation(seen)[:max_queries] if seen else np.zeros(0, int)
    unseen = rng.permutation(unseen)[:max_queries] if unseen else np.zeros(0, int)
    queries = set(np.concatenate([seen, unseen]).tolist())
    out_photos = {i for g in out for i in by_group[g]}
    fit = np.array(sorted(i for i in fit if i not in out_photos and i not in queries), dtype=int)
    gallery = np.array([i for i in range(len(labels)) if i not in queries], dtype=int)
    return Split(fit, np.sort(np.asarray(seen, dtype=int)), np.sort(np.asarray(unseen, dtype=int)), gallery)


def retrieval(features: np.ndarray, labels, queries: np.ndarray, gallery: np.ndarray) -> dict:
    """P@1, R@5 (distinct groups) and mAP@100 (photos) of `queries` searched over `gallery` (unit rows)."""
    labels = np.asarray(labels)
    if len(queries) == 0:
        return {"p@1": None, "r@5": None, "map": None, "queries": 0}
    _, codes = np.unique(labels, return_inverse=True)
    g_codes = codes[gallery]
    order = np.argsort(g_codes, kind="stable")
    sorted_codes = g_codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    group_of_start = sorted_codes[starts]
    relevant_counts = np.bincount(g_codes, minlength=codes.max() + 1)
    gal = features[gallery][order]
    p1, r5, aps = [], [], []
    for lo in range(0, len(queries), QUERY_CHUNK):
        q = queries[lo:lo + QUERY_CHUNK]
        scores = features[q] @ gal.T
        truth = codes[q]
        best = np.maximum.reduceat(scores, starts, axis=1)  # per group: its best photo
        k = min(5, best.shape[1])
        top = np.argpartition(-best, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(best, top, 1), 1, kind="stable"), 1)
        hits_groups = group_of_start[top] == truth[:, None]
        p1 += hits_groups[:, 0].tolist()
        r5 += hits_groups.any(axis=1).tolist()
        depth = min(RANK_DEPTH, scores.shape[1])
        part = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        part_sorted = np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1), 1, kind="stable"), 1)
        hits = sorted_codes[part_sorted] == truth[:, None]
        precision = np.cumsum(hits, axis=1) / np.arange(1, depth + 1)
        denominators = np.minimum(relevant_counts[truth], depth)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = np.where(denominators > 0, (precision * hits).sum(axis=1) / np.maximum(denominators, 1), 0.0)
        aps += ap.tolist()
    return {"p@1": round(float(np.mean(p1)), 4), "r@5": round(float(np.mean(r5)), 4),
            "map": round(float(np.mean(aps)), 4), "queries": int(len(queries))}


def split_figures(features: np.ndarray, labels, split: Split) -> dict:
    """{"seen": retrieval(...), "unseen": retrieval(...)} for one feature space."""
    return {"seen": retrieval(features, labels, split.seen, split.gallery),
            "unseen": retrieval(features, labels, split.unseen, split.gallery)}


def regressions(before: dict, after: dict, tolerance: float = 0.0) -> list[str]:
    """The figures that got worse (by more than `tolerance`): ["seen p@1 0.61 -> 0.58", ...]."""
    worse = []
    for kind in ("seen", "unseen"):
        for key in ("p@1", "r@5", "map"):
            b, a = before.get(kind, {}).get(key), after.get(kind, {}).get(key)
            if b is not None and a is not None and a < b - tolerance:
                worse.append(f"{kind} {key} {b:.4f} -> {a:.4f}")
    return worse


def score(figures: dict) -> float:
    """One number to select settings by: mean P@1 over the query kinds present (then mAP breaks ties)."""
    kinds = [figures[k] for k in ("seen", "unseen") if figures.get(k, {}).get("p@1") is not None]
    if not kinds:
        return 0.0
    return float(np.mean([k["p@1"] for k in kinds]) + 1e-3 * np.mean([k["map"] for k in kinds]))
