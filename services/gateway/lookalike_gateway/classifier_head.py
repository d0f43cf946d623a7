"""The classifier's maths: a linear head (softmax over coef @ x + intercept) and its fitting.

A multinomial logistic regression on standardised features: C chosen by stratified k-fold
cross-validation on the training part, accuracy and per-class precision/recall measured on a stratified
held-out part; the standardisation is folded into the head, so classifying is one matrix-vector
product and a softmax in numpy (microseconds).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DEFAULT_HOLDOUT = 0.2
DEFAULT_C_VALUES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # on standardised features; see bench/classify_eval.py
CV_FOLDS = 3
SEED = 0
MAX_ITER = 1000


class TrainingError(ValueError):
    """The stored data cannot train a classifier (FAILED_PRECONDITION): the message says why."""


# ---- the head -------------------------------------------------------------------------------------

def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class LinearHead:
    """probabilities(x) = softmax(coef @ x + intercept); one row of coef per label."""

    labels: tuple[str, ...]
    coef: np.ndarray  # (k, d) float64
    intercept: np.ndarray  # (k,) float64

    def __post_init__(self):
        k = len(self.labels)
        if k < 2 or self.coef.shape[0] != k or self.intercept.shape != (k,) or self.coef.ndim != 2:
            raise ValueError(f"inconsistent head: {k} labels, coef {self.coef.shape}, intercept {self.intercept.shape}")

    @property
    def dim(self) -> int:
        return int(self.coef.shape[1])

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Label probabilities of one vector (k,) or of rows (n, k)."""
        return softmax(np.asarray(x, dtype=np.float64) @ self.coef.T + self.intercept)

    def top(self, x: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The k most probable labels of one vector, best first (ties: label order)."""
        p = self.probabilities(x)
        order = np.argsort(-p, kind="stable")[:k]
        return [(self.labels[i], float(p[i])) for i in order]


def _head_from_sklearn(model, mean: np.ndarray, scale: np.ndarray) -> LinearHead:
    """Folds the standardisation (x - mean) / scale into the fitted model's weights."""
    w = np.asarray(model.coef_, dtype=np.float64)
    b = np.asarray(model.intercept_, dtype=np.float64)
    if w.shape[0] == 1:  # binary: sigmoid(w x + b) == softmax([-z/2, z/2])
        w = np.vstack([-w[0] / 2, w[0] / 2])
        b = np.array([-b[0] / 2, b[0] / 2])
    w = w / scale
    return LinearHead(tuple(str(c) for c in model.classes_), w, b - w @ mean)


def fit_head(x: np.ndarray, y, *, holdout_fraction: float = DEFAULT_HOLDOUT,
             c_values=DEFAULT_C_VALUES, folds: int = CV_FOLDS, seed: int = SEED,
             progress: Callable[[float, str], None] | None = None) -> tuple[LinearHead, dict]:
    """Fits the head on (x, y): stratified held-out split, C by stratified `folds`-fold CV on the
    training part, the model refit on the whole training part with that C.

    Returns the head and a report (labels, train_size, test_size, accuracy, cv_accuracy, c, cv_scores,
    per_class, confusion). Every label needs at least 2 examples (raise TrainingError otherwise). With
    holdout_fraction 0 there is no held-out part: accuracy, per_class and confusion come from the
    out-of-fold predictions of the chosen C. `progress(fraction, stage)` hears about each fit.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
    from sklearn.model_selection import StratifiedKFold, train_test_split

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray([str(v) for v in y])
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x has shape {x.shape} for {y.shape[0]} labels")
    counts = Counter(y.tolist())
    labels = sorted(counts)
    if len(labels) < 2:
        raise TrainingError(f"need at least 2 labels, got {len(labels)} ({', '.join(labels) or 'none'})")
    if min(counts.values()) < 2:
        rare = sorted(label for label, n in counts.items() if n < 2)
        raise TrainingError(f"every label needs at least 2 examples; {', '.join(rare)} has 1")
    c_values = sorted({float(c) for c in c_values})
    if not c_values or any(not np.isfinite(c) or c <= 0 for c in c_values):
        raise ValueError(f"C values must be positive and finite, got {c_values}")
    if not 0 <= holdout_fraction < 0.5:
        raise ValueError(f"holdout_fraction must be in [0, 0.5), got {holdout_fraction}")

    if holdout_fraction > 0:
        n_test = min(max(int(round(holdout_fraction * len(y))), len(labels)), len(y) - len(labels))
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=n_test, stratify=y, random_state=seed)
    else:
        x_train, y_train, x_test, y_test = x, y, x[:0], y[:0]
    mean = x_train.mean(axis=0)
    scale = np.maximum(x_train.std(axis=0), 1e-6)
    z_train = ((x_train - mean) / scale).astype(np.float32)  # float32: half the time, the same accuracy

    train_counts = Counter(y_train.tolist())
    n_folds = max(2, min(folds, min(train_counts.values())))
    cv_scores = []
    oof = {}
    if min(train_counts.values()) >= 2:
        predicted = {c: np.empty_like(y_train) for c in c_values}
        losses = dict.fromkeys(c_values, 0.0)
        fits, done = n_folds * len(c_values) + 1, 0  # + the final fit
        for fit_idx, val_idx in StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(z_train, y_train):
            # C ascending, each fit starting from the previous solution (the same optimum, ~2x fewer iterations)
            model = LogisticRegression(C=c_values[0], max_iter=MAX_ITER, warm_start=True)
            truth = y_train[val_idx]
            for c in c_values:
                model.C = c
                model.fit(z_train[fit_idx], y_train[fit_idx])
                proba = model.predict_proba(z_train[val_idx])
                predicted[c][val_idx] = model.classes_[np.argmax(proba, axis=1)]
                p_truth = proba[np.arange(len(val_idx)), np.searchsorted(model.classes_, truth)]
                losses[c] -= float(np.log(np.clip(p_truth, 1e-12, 1)).sum())
                done += 1
                if progress is not None:
                    progress(done / fits, f"cross-validating C ({done} of {fits - 1} fits)")
        cv_scores = [float(np.mean(predicted[c] == y_train)) for c in c_values]
        log_losses = [losses[c] / len(y_train) for c in c_values]
        oof = predicted
        # the best CV accuracy; among equals the best CV log-loss (better calibrated probabilities)
        best = max(range(len(c_values)), key=lambda i: (cv_scores[i], -log_losses[i]))
        c = c_values[best]
    else:  # a label with one training example: no CV possible, take the middle of the grid
        c = c_values[len(c_values) // 2]
    if progress is not None:
        progress(1 - 1 / (n_folds * len(c_values) + 1) if cv_scores else 0.0, f"fitting with C={c:g}")
    model = LogisticRegression(C=c, max_iter=MAX_ITER).fit(z_train, y_train)
    head = _head_from_sklearn(model, mean, scale)

    if len(y_test):
        truth, predicted = y_test, np.asarray(head.labels)[np.argmax(head.probabilities(x_test), axis=1)]
    elif oof:
        truth, predicted = y_train, oof[c]
    else:
        truth = predicted = y_train[:0]
    precision, recall, _, support = precision_recall_fscore_support(truth, predicted, labels=list(head.labels),
                                                                    zero_division=0)
    report = {
        "labels": list(head.labels),
        "train_size": int(len(y_train)),
        "test_size": int(len(y_test)),
        "accuracy": float(np.mean(truth == predicted)) if len(truth) else 0.0,
        "cv_accuracy": float(max(cv_scores)) if cv_scores else 0.0,
        "c": float(c),
        "cv_scores": {f"{cv_c:g}": round(s, 6) for cv_c, s in zip(c_values, cv_scores)},
        "cv_folds": int(n_folds) if cv_scores else 0,
        "per_class": [{"label": label, "precision": float(p), "recall": float(r), "support": int(s),
                       "train_examples": int(train_counts.get(label, 0))}
                      for label, p, r, s in zip(head.labels, precision, recall, support)],
        "confusion": confusion_matrix(truth, predicted, labels=list(head.labels)).tolist() if len(truth) else [],
    }
    return head, report

