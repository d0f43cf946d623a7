"""Classifier persistence (`lookalike_gateway.classifier_store`): versions, the current pointer, no pickle."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np

from lookalike_gateway.classifier_head import fit_head
from lookalike_gateway.classifier_store import ClassifierRepository

from .classifier_data import clusters


def test_repository_versions_pointer_and_no_pickle(tmp_path):
    repo = ClassifierRepository(tmp_path / "classifiers")
    assert repo.versions() == [] and repo.current_version() is None
    x, y, _ = clusters(n_per_label=10)
    head, report = fit_head(x, y, holdout_fraction=0.0, c_values=(1.0,))
    first = repo.save(head, {**report, "label_field": "category"})  # named by the repository
    later = ClassifierRepository.new_version(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1))
    second = repo.save(head, {**report, "label_field": "category", "version": later})  # distinct, no waiting
    assert repo.versions() == sorted([first, second]) and repo.current_version() == second
    loaded, meta = repo.load(second)
    assert loaded.labels == head.labels and meta["version"] == second and meta["label_field"] == "category"
    np.testing.assert_array_equal(loaded.coef, head.coef)
    np.testing.assert_array_equal(loaded.intercept, head.intercept)
    with np.load(tmp_path / "classifiers" / second / "head.npz", allow_pickle=False) as data:
        assert set(data.files) == {"coef", "intercept", "labels"} and data["labels"].dtype.kind == "U"
    json.loads((tmp_path / "classifiers" / second / "meta.json").read_text())
    repo.activate(first)
    assert repo.current_version() == first
    (tmp_path / "classifiers" / "current").write_text("../../etc\n")  # a bad pointer: the newest version
    assert repo.current_version() == second
    assert not [p for p in (tmp_path / "classifiers").iterdir() if p.name.startswith(".")]  # no temp leftovers
