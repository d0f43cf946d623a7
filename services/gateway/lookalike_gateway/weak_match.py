"""The "no close match" threshold of a catalogue, from its own photos (numpy only; the gateway's calibrator and
bench/multi_image.py share it).

Leave each product out and find its nearest other product (its score and whether it shares the category); fit
P(same category) against that score, monotone (isotonic); the threshold is the lowest score at which the fit is
still at least one half. Below it even the best result is usually not the same kind of product.
"""
from __future__ import annotations

import numpy as np


def isotonic(y: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators: the non-decreasing least-squares fit of y (in the order given)."""
    blocks: list[list[float]] = []  # [sum, count]
    for value in np.asarray(y, dtype=float):
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    if not blocks:
        return np.zeros(0)
    return np.concatenate([np.full(int(c), s / c) for s, c in blocks])


def weak_match_score(scores: np.ndarray, same: np.ndarray) -> float:
    """The lowest nearest-neighbour score at which P(same category), fitted monotone in the score, is still at
    least one half; 0 when it never drops below one half (or there are no pairs)."""
    scores = np.asarray(scores, dtype=float)
    same = np.asarray(same, dtype=bool)
    if scores.shape != same.shape:
        raise ValueError(f"{scores.shape[0]} scores but {same.shape[0]} same-category flags")
    if scores.size == 0:
        return 0.0
    order = np.argsort(scores, kind="stable")
    fitted = isotonic(same[order].astype(float))
    good = np.nonzero(fitted >= 0.5)[0]
    return float(scores[order][good[0]]) if len(good) and good[0] > 0 else 0.0
