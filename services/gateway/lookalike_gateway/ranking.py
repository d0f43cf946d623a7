"""Category-aware re-ranking of image-search results.

Plain search orders the catalogue by cosine similarity of the deep features. When a category classifier
has been trained on the catalogue (lookalike.v1.Classification/TrainClassifier on the ``category``
field), the gateway fetches a deeper candidate list, then orders it by

    cosine similarity + boost * P(candidate's category | query photo)

where P comes from the classifier's linear head applied to the query embedding the gateway already
has (one 10x1280 matrix-vector product). Results keep their cosine ``score``; only the order changes.

On clothing-small (train split as catalogue, classifier trained on it as the service trains it): boost
0.2, chosen on the validation split (P@1 0.812 -> 0.874), raises test P@1 0.804 -> 0.911 and mAP@100
0.539 -> 0.624. See bench/quality_suite.py (category_rerank) and bench/results/latest.md.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rerank_by_category(results: Sequence, probabilities: np.ndarray, labels: Sequence[str],
                       boost: float) -> list:
    """`results` (objects with .score and .product.category, best first) ordered by
    score + boost * probabilities[label index of their category]; a category the classifier does not
    know counts probability 0. Stable: ties keep the search order."""
    index = {label: i for i, label in enumerate(labels)}
    keys = [r.score + boost * (float(probabilities[index[r.product.category]])
                               if r.product.category in index else 0.0) for r in results]
    order = sorted(range(len(results)), key=lambda i: -keys[i])
    return [results[i] for i in order]
