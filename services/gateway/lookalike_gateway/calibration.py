"""The gateway calibrates the catalogue's "no close match" threshold itself (LOOKALIKE_GATEWAY_WEAK_MATCH_SCORE=auto).

In the background, never on a request: a sample of the active collection (at most MAX_SAMPLE products, scrolled in
point-id order, i.e. uniform, since ids are uuid5 hashes of the product ids) is searched against the whole collection
(SearchByVectors with each product's main photo, the product itself skipped), and lookalike_gateway.weak_match turns
those nearest-other-product scores and categories into the threshold. It is recomputed when the active collection
changes or its product count moves by more than RECOUNT_FRACTION (while it keeps moving, passes are spaced by
PASS_GAP_FACTOR times their duration); a catalogue with fewer than MIN_PRODUCTS
categorised products or a single category leaves it off (0). A number in the setting overrides all this; 0 = off.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import grpc
import numpy as np
from prometheus_client import Gauge

from lookalike.limits import MAX_SCROLL_LIMIT
from lookalike.search.v1 import search_pb2

from .collection_manager import CollectionManager
from .errors import ApiError, Deadline
from .search_client import SearchClient
from .weak_match import weak_match_score

log = logging.getLogger(__name__)

AUTO = "auto"
MAX_SAMPLE = 2000  # products searched per calibration
MIN_PRODUCTS = 20  # fewer categorised products than this: no threshold
RECOUNT_FRACTION = 0.10  # recalibrate when the product count moved by more than this
CHECK_S = 5.0  # how often the collection and its count are looked at (one CountPoints)
# While the count keeps moving (a big ingest), a pass waits this many times its predecessor's duration after it:
# calibration takes at most ~1/(1 + PASS_GAP_FACTOR) of the search service's time. A new collection does not wait.
PASS_GAP_FACTOR = 10.0
PASS_TIMEOUT_S = 120.0  # the deadline of one calibration pass (scroll + searches)
SEARCH_BATCH = 256  # vectors per SearchByVectors
SCROLL_PAGE = MAX_SCROLL_LIMIT  # the largest page the search service gives

WEAK_MATCH_SCORE = Gauge("lookalike_gateway_weak_match_score",
                         "The catalogue's \"no close match\" threshold searches report (0 = off)")


class Sample(NamedTuple):
    """Leave-one-out: each sampled product's nearest other product's score and whether it shares the category."""

    scores: np.ndarray
    same: np.ndarray
    categories: int  # distinct categories among the sampled products


EMPTY = Sample(np.zeros(0), np.zeros(0, dtype=bool), 0)


def threshold(sample: Sample) -> float:
    """The threshold of a sample, 0 when it cannot say (too few categorised products, a single category)."""
    if len(sample.scores) < MIN_PRODUCTS or sample.categories < 2:
        return 0.0
    return weak_match_score(sample.scores, sample.same)


class WeakMatchCalibrator:
    """Holds the threshold searches report. `setting` is a number (fixed; 0 = off) or "auto": then `refresh`
    (run every CHECK_S by the background thread from `start`) recalibrates when the active collection or its
    product count changed. `active()` -> the collection name searched, `count(collection)` -> its products,
    `measure(collection)` -> a Sample."""

    def __init__(self, setting: float | str, active: Callable[[], str], count: Callable[[str], int],
                 measure: Callable[[str], Sample], interval: float = CHECK_S,
                 clock: Callable[[], float] = time.monotonic):
        self.auto = setting == AUTO
        self._value = 0.0 if self.auto else float(setting)
        self._active, self._count, self._measure = active, count, measure
        self.interval, self._clock = interval, clock
        self._next_pass = 0.0  # a count move before this clock time waits (PASS_GAP_FACTOR)
        self._collection: str | None = None  # what the value was calibrated on
        self._products = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        WEAK_MATCH_SCORE.set(self._value)

    def value(self) -> float:
        return self._value

    def _stale(self, collection: str, products: int) -> bool:
        if collection != self._collection:
            return True
        return abs(products - self._products) > RECOUNT_FRACTION * self._products

    def refresh(self) -> bool:
        """One check: recalibrate when needed. Returns whether it did; a failing dependency keeps the value and
        is retried at the next check."""
        if not self.auto:
            return False
        try:
            collection = self._active()
            products = self._count(collection)
            if not self._stale(collection, products):
                return False
            if collection == self._collection and self._clock() < self._next_pass:
                return False  # the count moved, but the last pass was recent: later
            if collection != self._collection and self._collection:  # "": the alias, before its name was read
                self._set(0.0)  # another collection (maybe another model): off until calibrated
            started = self._clock()
            sample = self._measure(collection) if products >= MIN_PRODUCTS else EMPTY
            self._next_pass = self._clock() + PASS_GAP_FACTOR * (self._clock() - started)
        except (ApiError, grpc.RpcError) as exc:
            log.warning("weak-match calibration: %s; retrying in %.0f s", getattr(exc, "message", exc), self.interval)
            return False
        value = threshold(sample)
        self._collection, self._products = collection, products
        self._set(value)
        log.info("weak-match score of %s (%d products, %d sampled, %d categories): %.4f%s", collection or "the "
                 "active collection", products, len(sample.scores), sample.categories, value,
                 "" if value else " (off: too few categorised products or a single category)")
        return True

    def _set(self, value: float) -> None:
        self._value = value
        WEAK_MATCH_SCORE.set(value)

    def start(self) -> None:
        if not self.auto or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, daemon=True, name="weak-match-calibration")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # never let the thread die: the threshold stays as it was
                log.exception("weak-match calibration failed")
            self._stop.wait(self.interval)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def for_collections(collections: CollectionManager, search: SearchClient, setting: float | str) -> WeakMatchCalibrator:
    """A calibrator of the active collection (`collections`) read through the search service (`search`)."""

    def active() -> str:
        return collections.active().collection

    def count(collection: str) -> int:
        return search.call("CountPoints", search_pb2.CountPointsRequest(collection=collection), Deadline(10.0)).count

    def measure(collection: str) -> Sample:
        return measure_collection(search.call, collection, Deadline(PASS_TIMEOUT_S))

    return WeakMatchCalibrator(setting, active, count, measure)


def measure_collection(call_search, collection: str, deadline: Deadline, limit: int = MAX_SAMPLE) -> Sample:
    """Scroll up to `limit` categorised products of `collection`, search each one's main photo against the whole
    collection and keep its nearest other product."""
    points, offset = [], ""
    while len(points) < limit:
        page = call_search("ScrollPoints", search_pb2.ScrollPointsRequest(
            limit=SCROLL_PAGE, offset=offset, with_vectors=True, collection=collection), deadline)
        points += [p for p in page.points if p.product.category and p.vector]
        offset = page.next_offset
        if not offset:
            break
    points = points[:limit]
    scores, same = [], []
    for start in range(0, len(points), SEARCH_BATCH):
        batch = points[start:start + SEARCH_BATCH]
        found = call_search("SearchByVectors", search_pb2.SearchByVectorsRequest(
            vectors=[p.vector for p in batch], top_k=2, collection=collection), deadline)
        for point, search in zip(batch, found.searches):
            other = next((r for r in search.results if r.product.id != point.product.id), None)
            if other is not None:
                scores.append(other.score)
                same.append(other.product.category == point.product.category)
    categories = len({p.product.category for p in points})
    return Sample(np.array(scores, dtype=float), np.array(same, dtype=bool), categories)
