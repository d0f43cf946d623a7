"""The quality gate of model switches: a collection's retrieval figures against the active one's.

Reading a collection's vectors with labels is shared with `lookalike adapt` (adaptation.py). The gate of a
reindex compares the two collections on the same held-out photos (adapt_eval.make_split over the labels:
the product, when products have several photos; else the category): P@1, R@5 and mAP of each photo's
search over the others. A figure that gets worse refuses the switch, unless forced; the report is kept
with the adaptations' (`<data_dir>/adaptations/reports/`).
"""
from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import numpy as np

from lookalike import vectors

from .adapt_eval import make_split, regressions, split_figures
from .adaptation_store import AdaptationStore
from .errors import ApiError
from .search_client import SearchClient, pages


def point_vectors(point) -> list[bytes]:
    """The packed vectors of a stored point: its main image's, then any further images'."""
    more = list(getattr(point, "more_vectors", ()))
    return ([point.vector] if point.vector else []) + more


def read_labelled(search: SearchClient, target, label: Callable,
                  raw: bool = True) -> tuple[np.ndarray, list[str], list[str]]:
    """(vectors [n, d], their labels, their product ids) of a collection: every image of every product
    with a label; raw: an adapted collection gives its raw vectors back (else: as stored and searched)."""
    xs, ys, ids = [], [], []
    for points in pages(search, target.collection):
        for point in points:
            value = label(point.product)
            if not value:
                continue
            for packed in point_vectors(point):
                vector = vectors.unpack(packed)
                xs.append(target.raw(vector) if raw else vector)
                ys.append(value)
                ids.append(point.product.id)
    if not xs:
        return np.zeros((0, 0), np.float32), [], []
    return np.stack(xs), ys, ids


def _key(product) -> str:
    return product.id


def compare(search: SearchClient, source, target) -> dict:
    """Figures of `target` against `source` on the same held-out photos (see the module docstring)."""
    sx, _, sids = read_labelled(search, source, _key, raw=False)  # each space as it is searched
    tx, _, tids = read_labelled(search, target, _key, raw=False)
    by_product: dict[str, list[int]] = {}
    for i, pid in enumerate(sids):
        by_product.setdefault(pid, []).append(i)
    grouped = any(len(v) >= 2 for v in by_product.values())
    categories: dict[str, str] = {}
    if not grouped:
        for points in pages(search, source.collection, with_vectors=False):
            for point in points:
                categories[point.product.id] = point.product.category
    # the same images in both: products present in both, in the source's order
    t_index: dict[tuple[str, int], int] = {}
    seen_in_target: dict[str, int] = {}
    for i, pid in enumerate(tids):
        n = seen_in_target.get(pid, 0)
        t_index[(pid, n)] = i
        seen_in_target[pid] = n + 1
    rows_s, rows_t, labels = [], [], []
    counter: dict[str, int] = {}
    for i, pid in enumerate(sids):
        n = counter.get(pid, 0)
        counter[pid] = n + 1
        j = t_index.get((pid, n))
        label = pid if grouped else categories.get(pid, "")
        if j is None or not label:
            continue
        rows_s.append(i)
        rows_t.append(j)
        labels.append(label)
    report = {"source": source.collection, "collection": target.collection, "label": "product" if grouped
              else "category", "photos": len(labels)}
    _, counts = np.unique(labels, return_counts=True) if labels else (None, np.zeros(0))
    if len(labels) < 10 or (counts >= 2).sum() < 2:
        report.update(before=None, after=None, regressions=[], note="too few labelled photos to compare")
        return report
    split = make_split(np.asarray(labels), group_holdout=0.0, seed=0, photo_holdout=0.2)
    labels_arr = np.asarray(labels)
    before = split_figures(sx[rows_s], labels_arr, split)
    after = split_figures(tx[rows_t], labels_arr, split)
    report.update(before=before, after=after, regressions=regressions(before, after))
    return report


def check_switch(search: SearchClient, reports: AdaptationStore, message, source, target, force: bool):
    """The gate of a reindex before its switch: the report saved (with the adaptations' reports) and put
    on the progress `message`; FAILED_PRECONDITION on a regression unless forced."""
    report = compare(search, source, target)
    report.update(kind="reindex", forced=bool(force and report["regressions"]))
    reports.save_report(report)
    if report["regressions"] and not force:
        raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                       f"{target.collection} searches worse than {source.collection} on held-out photos: "
                       + "; ".join(report["regressions"]) + f"; the alias still points at {source.collection} "
                       "(force activates anyway)")
    message.quality_json = json.dumps(report)
    return message
