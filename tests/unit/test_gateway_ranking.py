"""Category-aware re-ranking of image search (lookalike_gateway.ranking) with in-memory fakes."""
from __future__ import annotations

from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from lookalike.v1 import types_pb2
from lookalike_gateway.classifier_head import LinearHead
from lookalike_gateway.errors import ApiError, Deadline
from lookalike_gateway.ranking import rerank_by_category

from .gateway_fakes import DIM, FakeEmbedder, ingest, make_gateway, png, unit


def result(pid: str, category: str, score: float) -> types_pb2.SearchResult:
    return types_pb2.SearchResult(product=types_pb2.Product(id=pid, category=category), score=score)


def test_rerank_orders_by_score_plus_boosted_category_probability():
    results = [result("a1", "a", 0.90), result("b1", "b", 0.85), result("x1", "unknown", 0.84), result("b2", "b", 0.50)]
    probabilities = np.array([0.1, 0.9])  # P(a), P(b)
    ranked = rerank_by_category(results, probabilities, ("a", "b"), boost=0.2)
    # a1 0.92, b1 1.03, x1 0.84 (unknown category: probability 0), b2 0.68
    assert [r.product.id for r in ranked] == ["b1", "a1", "x1", "b2"]
    assert [r.score for r in ranked] == pytest.approx([0.85, 0.90, 0.84, 0.50])  # scores stay cosine
    assert [r.product.id for r in rerank_by_category(results, probabilities, ("a", "b"), 0.0)] == [
        "a1", "b1", "x1", "b2"]  # boost 0: the search order


class FakeClassifier:
    """category_head as ClassifierService has it: a head predicting "b" for every vector."""

    def __init__(self, head: LinearHead | None):
        self.head = head
        self.asked: list[tuple[str, int]] = []

    def category_head(self, model_id: str, dim: int):
        self.asked.append((model_id, dim))
        return self.head


B_HEAD = LinearHead(("a", "b"), np.zeros((2, DIM)), np.array([0.0, 5.0]))


@pytest.fixture
def catalogue(tmp_path):
    """A gateway over five "a" products that look like the query and five "b" products a bit less so."""
    query = png(100)
    base = unit(np.arange(1, DIM + 1, dtype=np.float64))
    vectors = {query: base}
    items = []
    for i in range(10):
        image = png(i)
        category = "a" if i < 5 else "b"
        noise = np.random.default_rng(i).normal(size=DIM) * (0.05 if category == "a" else 0.3)
        vectors[image] = unit(base + noise)
        items.append((types_pb2.Product(id=f"{category}{i}", category=category), image))
    gateway = make_gateway(tmp_path, embedder=FakeEmbedder(vectors))
    results = ingest(gateway, items)
    assert all(r.error is None for r in results)
    return SimpleNamespace(gateway=gateway, query=query)


def search(gateway, image, top_k=3, flt=None, boost=None):
    return gateway.search_by_image(image, top_k, flt or types_pb2.Filter(), Deadline(5), boost)


def test_without_a_classifier_the_order_is_plain_similarity(catalogue):
    found = search(catalogue.gateway, catalogue.query)
    assert found.category_boost == 0.0
    assert [r.product.category for r in found.results] == ["a", "a", "a"]
    scores = [r.score for r in found.results]
    assert scores == sorted(scores, reverse=True)


def test_a_category_classifier_reorders_candidates(catalogue):
    classifier = FakeClassifier(B_HEAD)
    catalogue.gateway.classifier = classifier
    fake_search = catalogue.gateway.search.stub.SearchByVector
    asked_top_k = []

    def recording_search(request, timeout=None, metadata=()):
        asked_top_k.append(request.top_k)
        return fake_search(request, timeout, metadata)
    catalogue.gateway.search.stub.SearchByVector = recording_search
    found = search(catalogue.gateway, catalogue.query)
    assert found.category_boost == pytest.approx(0.2)  # the default setting
    assert [r.product.category for r in found.results] == ["b", "b", "b"]
    assert classifier.asked == [(catalogue.gateway.collections.active().model_id, DIM)]
    assert asked_top_k == [100]  # the re-ranking depth, not top_k: all ten products were candidates
    assert len(found.results) == 3


def test_boost_zero_or_a_category_filter_keep_plain_order(catalogue):
    catalogue.gateway.classifier = FakeClassifier(B_HEAD)
    assert [r.product.category for r in search(catalogue.gateway, catalogue.query, boost=0.0).results] == ["a"] * 3
    filtered = search(catalogue.gateway, catalogue.query, flt=types_pb2.Filter(category="b"))
    assert filtered.category_boost == 0.0  # one category: nothing to re-rank (the fake ignores filters)
    assert [r.product.category for r in filtered.results] == ["a"] * 3


def test_a_classifier_of_another_field_or_model_is_not_used(catalogue):
    catalogue.gateway.classifier = FakeClassifier(None)  # category_head said no
    found = search(catalogue.gateway, catalogue.query)
    assert found.category_boost == 0.0 and [r.product.category for r in found.results] == ["a"] * 3


@pytest.mark.parametrize("boost", [-0.1, 10.5, float("nan"), float("inf")])
def test_bad_boost_is_invalid_argument(catalogue, boost):
    with pytest.raises(ApiError) as err:
        search(catalogue.gateway, catalogue.query, boost=boost)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "category_boost" in str(err.value)
