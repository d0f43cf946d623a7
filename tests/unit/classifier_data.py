"""Synthetic embeddings for the classifier tests: labelled clusters on the unit sphere (no model)."""

from __future__ import annotations

import numpy as np


DIM = 32
LABELS = ["bags", "hats", "shirts", "shoes", "skirts"]


def unit(rows):
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def clusters(n_per_label=30, labels=LABELS, spread=0.15, seed=0):
    rng = np.random.default_rng(seed)
    centers = unit(rng.standard_normal((len(labels), DIM)))
    x = np.concatenate([unit(c + spread * rng.standard_normal((n_per_label, DIM))) for c in centers])
    y = [label for label in labels for _ in range(n_per_label)]
    return x.astype(np.float32), y, centers
