"""The "no close match" threshold: the maths (lookalike_gateway.weak_match) and the gateway's refresh policy
(lookalike_gateway.calibration) with fakes: no sleeps, the refresh is called directly."""
from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from lookalike_gateway import calibration
from lookalike.search.v1 import search_pb2
from lookalike.v1 import types_pb2
from lookalike_gateway.calibration import Sample, WeakMatchCalibrator, measure_collection, threshold
from lookalike_gateway.errors import ApiError
from lookalike_gateway.settings import GatewaySettings
from lookalike_gateway.weak_match import isotonic, weak_match_score
from pydantic import ValidationError


def test_isotonic_pools_violators_into_their_mean():
    assert isotonic(np.array([1.0, 0.0, 1.0, 1.0])).tolist() == [0.5, 0.5, 1.0, 1.0]
    assert isotonic(np.array([0.0, 0.0, 1.0])).tolist() == [0.0, 0.0, 1.0]
    assert isotonic(np.array([1.0, 1.0, 0.0, 0.0])).tolist() == [0.5] * 4
    assert isotonic(np.zeros(0)).size == 0


def test_weak_match_score_is_where_same_category_precision_reaches_one_half():
    # monotone fit of `same` in score order: 0, 0, .5, .5, 2/3, 2/3, 2/3, 1, 1 -> one half from 0.35 up
    scores = np.array([0.2, 0.3, 0.35, 0.4, 0.55, 0.6, 0.7, 0.8, 0.9])
    same = np.array([0, 0, 1, 0, 1, 1, 0, 1, 1], dtype=bool)
    assert weak_match_score(scores, same) == pytest.approx(0.35)
    # the order of the pairs does not matter
    perm = np.random.default_rng(0).permutation(len(scores))
    assert weak_match_score(scores[perm], same[perm]) == pytest.approx(0.35)
    # when the lowest scores already reach one half, there is no cut-off
    same[0] = True
    assert weak_match_score(scores, same) == 0.0


def test_weak_match_score_is_off_when_precision_never_drops_below_one_half():
    assert weak_match_score(np.array([0.1, 0.5, 0.9]), np.array([1, 1, 1], dtype=bool)) == 0.0
    assert weak_match_score(np.zeros(0), np.zeros(0, dtype=bool)) == 0.0
    with pytest.raises(ValueError):
        weak_match_score(np.array([0.1, 0.2]), np.array([True]))


def _sample(n: int, categories: int = 2) -> Sample:
    scores = np.linspace(0.1, 0.9, n)
    return Sample(scores, scores > 0.5, categories)


def test_threshold_needs_enough_categorised_products_and_two_categories():
    assert threshold(_sample(calibration.MIN_PRODUCTS - 1)) == 0.0
    assert threshold(_sample(calibration.MIN_PRODUCTS, categories=1)) == 0.0
    assert 0.5 < threshold(_sample(calibration.MIN_PRODUCTS)) < 0.6


class FakeCatalogue:
    def __init__(self):
        self.collection, self.products, self.measured = "c1", 100, []
        self.sample = _sample(100)
        self.error = None

    def active(self):
        if self.error:
            raise self.error
        return self.collection

    def count(self, collection):
        return self.products

    def measure(self, collection):
        self.measured.append(collection)
        return self.sample


def _calibrator(cat: FakeCatalogue, setting="auto") -> WeakMatchCalibrator:
    return WeakMatchCalibrator(setting, cat.active, cat.count, cat.measure)


def test_auto_calibrates_once_then_only_when_the_collection_or_its_count_moves():
    cat = FakeCatalogue()
    cal = _calibrator(cat)
    assert cal.value() == 0.0  # nothing until the first pass
    assert cal.refresh() and 0.5 < cal.value() < 0.6
    assert calibration.WEAK_MATCH_SCORE._value.get() == cal.value()  # the /metrics gauge
    assert not cal.refresh() and cat.measured == ["c1"]  # unchanged: no new pass
    cat.products = 109  # within 10%
    assert not cal.refresh()
    cat.products = 111  # moved by more than 10%
    assert cal.refresh() and cat.measured == ["c1", "c1"]
    cat.collection, cat.sample = "c2", _sample(100)._replace(scores=np.linspace(0.2, 1.0, 100))
    assert cal.refresh() and cat.measured[-1] == "c2" and cal.value() > 0.6


def test_too_few_products_leave_it_off_without_measuring():
    cat = FakeCatalogue()
    cat.products = calibration.MIN_PRODUCTS - 1
    cal = _calibrator(cat)
    assert cal.refresh() and cal.value() == 0.0 and cat.measured == []


def test_a_new_collection_is_off_until_calibrated_and_a_failing_pass_is_retried():
    cat = FakeCatalogue()
    cal = _calibrator(cat)
    cal.refresh()
    cat.collection = "c2"

    def broken(collection):
        raise ApiError(grpc.StatusCode.UNAVAILABLE, "search service down")
    cal._measure = broken
    assert not cal.refresh() and cal.value() == 0.0  # not the old collection's value
    cal._measure = cat.measure
    assert cal.refresh() and cal.value() > 0  # retried at the next check
    cat.error = ApiError(grpc.StatusCode.UNAVAILABLE, "down")
    assert not cal.refresh() and cal.value() > 0  # a dead dependency keeps the value


def test_a_number_overrides_and_zero_is_off():
    cat = FakeCatalogue()
    fixed = _calibrator(cat, 0.42)
    assert fixed.value() == 0.42 and not fixed.refresh() and cat.measured == []
    fixed.start()  # no thread for a fixed value
    assert fixed._thread is None
    assert _calibrator(cat, 0.0).value() == 0.0


def test_the_background_thread_calibrates_and_stops():
    cat = FakeCatalogue()
    cal = WeakMatchCalibrator("auto", cat.active, cat.count, cat.measure, interval=3600)
    done = threading.Event()
    measure = cat.measure
    cal._measure = lambda c: (measure(c), done.set())[0]
    cal.start()
    assert done.wait(30)
    cal.close()
    assert not cal._thread.is_alive() and cal.value() > 0


def test_setting_defaults_to_auto_takes_numbers_and_refuses_the_rest(monkeypatch):
    monkeypatch.delenv("LOOKALIKE_GATEWAY_WEAK_MATCH_SCORE", raising=False)
    assert GatewaySettings().weak_match_score == "auto"
    monkeypatch.setenv("LOOKALIKE_GATEWAY_WEAK_MATCH_SCORE", "0.45")
    assert GatewaySettings().weak_match_score == 0.45
    for bad in ("1.5", "sometimes"):
        monkeypatch.setenv("LOOKALIKE_GATEWAY_WEAK_MATCH_SCORE", bad)
        with pytest.raises(ValidationError):
            GatewaySettings()


def test_measure_collection_skips_the_product_itself_and_uncategorised_ones():
    """Leave-one-out through fake ScrollPoints / SearchByVectors: each sampled product's nearest *other*."""
    products = [("a", "shoes"), ("b", "shoes"), ("c", "hat"), ("d", "")]
    calls = []

    def call_search(method, request, deadline):
        calls.append((method, request.collection))
        if method == "ScrollPoints":
            page = int(request.offset or 0)
            pid, category = products[page]
            point = search_pb2.Point(product=types_pb2.Product(id=pid, category=category), vector=pid.encode())
            return search_pb2.ScrollPointsResponse(points=[point],
                                                   next_offset=str(page + 1) if page + 1 < len(products) else "")
        assert method == "SearchByVectors" and request.top_k == 2
        nearest = {"a": ("b", "shoes", 0.9), "b": ("c", "hat", 0.4), "c": ("a", "shoes", 0.3)}
        searches = []
        for vector in request.vectors:
            me = vector.decode()
            other, category, score = nearest[me]
            searches.append(search_pb2.SearchByVectorResponse(results=[
                types_pb2.SearchResult(product=types_pb2.Product(id=me, category="x"), score=1.0),
                types_pb2.SearchResult(product=types_pb2.Product(id=other, category=category), score=score)]))
        return search_pb2.SearchByVectorsResponse(searches=searches)

    sample = measure_collection(call_search, "c1", deadline=None)
    assert sample.scores.tolist() == pytest.approx([0.9, 0.4, 0.3])
    assert sample.same.tolist() == [True, False, False] and sample.categories == 2
    assert {c for _, c in calls} == {"c1"}
    limited = measure_collection(call_search, "c1", deadline=None, limit=1)
    assert len(limited.scores) == 1


def test_while_the_count_keeps_moving_passes_are_spaced_by_their_duration():
    cat = FakeCatalogue()
    now = [0.0]
    measure = cat.measure

    def slow_measure(collection):  # each pass takes 2 s of the fake clock
        now[0] += 2.0
        return measure(collection)
    cal = WeakMatchCalibrator("auto", cat.active, cat.count, slow_measure, clock=lambda: now[0])
    assert cal.refresh() and len(cat.measured) == 1
    cat.products = 200  # a big ingest: the count doubled
    now[0] += 2.0 * calibration.PASS_GAP_FACTOR - 1
    assert not cal.refresh() and len(cat.measured) == 1  # too soon after a 2 s pass
    now[0] += 1
    assert cal.refresh() and len(cat.measured) == 2
    cat.collection = "c2"  # a new collection does not wait
    assert cal.refresh() and cat.measured[-1] == "c2"


def test_for_collections_counts_and_measures_the_active_collection_through_the_search_client():
    """The calibrator built from the narrow collaborators: the active collection's name from `collections`,
    its count and its sample through `search.call`, each call with a deadline."""
    from types import SimpleNamespace

    calls = []

    def call(method, request, deadline):
        calls.append((method, request.collection, deadline.remaining("test") > 0))
        if method == "CountPoints":
            return search_pb2.CountPointsResponse(count=calibration.MIN_PRODUCTS)
        assert method == "ScrollPoints"
        return search_pb2.ScrollPointsResponse(points=[], next_offset="")

    collections = SimpleNamespace(active=lambda: SimpleNamespace(collection="c1"))
    calibrator = calibration.for_collections(collections, SimpleNamespace(call=call), "auto")
    assert calibrator.refresh() is True and calibrator.value() == 0.0  # no categorised product: off
    assert calls == [("CountPoints", "c1", True), ("ScrollPoints", "c1", True)]
    assert calibrator.refresh() is False and len(calls) == 3  # the same collection and count: only counted
