"""The classifier head and its training (`lookalike_gateway.classifier_head`): softmax, the fit against
sklearn, the reports, refused labels, the top-k answer -- synthetic embeddings, no model."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike_gateway.classifier_head import LinearHead, TrainingError, fit_head, softmax

from .classifier_data import DIM, LABELS, clusters, unit


def test_softmax_is_stable_and_normalised():
    p = softmax(np.array([1000.0, 1001.0, 999.0]))
    assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0) and p.argmax() == 1
    rows = softmax(np.array([[0.0, 0.0], [0.0, np.log(3.0)]]))
    np.testing.assert_allclose(rows, [[0.5, 0.5], [0.25, 0.75]])


def test_fit_head_matches_sklearn_and_reports():
    from sklearn.linear_model import LogisticRegression

    x, y, _ = clusters()
    head, report = fit_head(x, y, holdout_fraction=0.2, c_values=(0.1, 1.0))
    assert list(head.labels) == LABELS == report["labels"]
    assert report["train_size"] + report["test_size"] == len(y) and report["test_size"] == 30
    assert report["accuracy"] >= 0.9 and report["cv_accuracy"] >= 0.9 and report["c"] in (0.1, 1.0)
    assert [m["label"] for m in report["per_class"]] == LABELS
    assert sum(m["support"] for m in report["per_class"]) == 30
    assert all(0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 for m in report["per_class"])
    assert np.array(report["confusion"]).sum() == 30 and np.trace(report["confusion"]) / 30 == report["accuracy"]
    # the folded standardisation gives sklearn's probabilities on the standardised features
    rng = np.random.default_rng(1)
    queries = unit(rng.standard_normal((7, DIM)))
    mean, scale = x.mean(0), np.maximum(x.std(0), 1e-6)
    reference = LogisticRegression(C=1.0, max_iter=1000).fit((x - mean) / scale, y)
    full, _ = fit_head(x, y, holdout_fraction=0.0, c_values=(1.0,))
    np.testing.assert_allclose(full.probabilities(queries), reference.predict_proba((queries - mean) / scale),
                               atol=1e-6)
    top = full.top(queries[0], 3)
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]


def test_holdout_zero_reports_out_of_fold_figures():
    x, y, _ = clusters(n_per_label=12)
    _, report = fit_head(x, y, holdout_fraction=0.0)
    assert report["test_size"] == 0 and report["train_size"] == len(y)
    assert report["accuracy"] == pytest.approx(report["cv_accuracy"])
    assert sum(m["support"] for m in report["per_class"]) == len(y)


def test_binary_head_is_the_sigmoid():
    from sklearn.linear_model import LogisticRegression

    x, y, _ = clusters(labels=["a", "b"], spread=0.4)
    head, _ = fit_head(x, y, holdout_fraction=0.0, c_values=(0.5,))
    assert head.coef.shape == (2, DIM)
    mean, scale = x.mean(0), np.maximum(x.std(0), 1e-6)
    reference = LogisticRegression(C=0.5, max_iter=1000).fit((x - mean) / scale, y)
    np.testing.assert_allclose(head.probabilities(x[:5]), reference.predict_proba((x[:5] - mean) / scale), atol=1e-6)


@pytest.mark.parametrize("y, message", [(["a"] * 10, "at least 2 labels"), (["a"] * 9 + ["b"], "at least 2 examples")])
def test_fit_head_refuses_degenerate_labels(y, message):
    with pytest.raises(TrainingError, match=message):
        fit_head(np.random.default_rng(0).standard_normal((10, 4)), y)


def test_top_gives_the_k_best_labels_best_first_with_their_softmax_probabilities():
    """(Its speed, ~20 us per call, is a benchmark figure: bench/classify_eval.py, head_microseconds_per_classify.)"""
    rng = np.random.default_rng(0)
    head = LinearHead(tuple(f"l{i}" for i in range(10)), rng.standard_normal((10, 1280)), rng.standard_normal(10))
    vector = unit(rng.standard_normal(1280)).astype(np.float32)
    probabilities = softmax(head.coef @ vector + head.intercept)
    best = np.argsort(-probabilities)[:5]
    top = head.top(vector, 5)
    assert [label for label, _ in top] == [f"l{i}" for i in best]
    np.testing.assert_allclose([p for _, p in top], probabilities[best], rtol=1e-5)
