"""lookalike_search.servicer: SearchServicer's validation and status mapping (a fake store and a fake context, no
sockets), and the proto <-> payload translation."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from lookalike.search.v1 import search_pb2
from lookalike.v1 import types_pb2
from lookalike.vectors import pack
from lookalike.limits import MAX_ID_LENGTH
from lookalike_search.servicer import SearchServicer, payload_product, product_payload, to_filter
from lookalike_search.store import Hit, NotFound, Record, StoreError


class Aborted(Exception):
    pass


class FakeContext:
    def abort(self, code, details):
        self.code, self.details = code, details
        raise Aborted()


class FakeStore:
    vector_size = 4

    def __init__(self, error: Exception | None = None):
        self.error = error
        self.calls = []

    def _maybe_fail(self, name, *args):
        self.calls.append((name, args))
        if self.error:
            raise self.error

    def search(self, vector, top_k, flt=None):
        self._maybe_fail("search", vector, top_k, flt)
        return [Hit("a", 0.5, {"product_id": "a", "title": "A", "price": 2.0})]

    def search_by_id(self, pid, top_k, flt=None):
        self._maybe_fail("search_by_id", pid, top_k, flt)
        raise NotFound(pid)

    def count(self, flt=None, images=False):
        self._maybe_fail("count", flt)
        return 3

    def scroll(self, limit, offset=None, flt=None, with_vectors=False):
        self._maybe_fail("scroll", limit, offset, flt, with_vectors)
        if offset == "bad":
            raise ValueError("scroll offset 'bad' is not one this service returned")
        vector = np.ones(4, dtype=np.float32) / 2 if with_vectors else None
        return [Record("a", {"product_id": "a", "category": "c"}, vector)], (None if offset else "next")


def call(servicer, method, request):
    ctx = FakeContext()
    try:
        return getattr(servicer, method)(request, ctx), None
    except Aborted:
        return None, (ctx.code, ctx.details)


VEC = pack(np.ones(4))


def test_search_ok_and_filter_passed():
    store = FakeStore()
    response, err = call(SearchServicer(store, 4), "SearchByVector", search_pb2.SearchByVectorRequest(
        vector=VEC, top_k=3, filter=types_pb2.Filter(category="c", max_price=9)))
    assert err is None
    assert response.results[0].product.id == "a" and response.results[0].product.price == 2.0
    assert response.results[0].score == pytest.approx(0.5)
    _, args = store.calls[0]
    assert args[1] == 3 and (args[2].category, args[2].min_price, args[2].max_price) == ("c", None, 9.0)


def test_empty_filter_message_means_no_filter():
    store = FakeStore()
    call(SearchServicer(store, 4), "CountPoints", search_pb2.CountPointsRequest(filter=types_pb2.Filter()))
    assert store.calls == [("count", (None,))]


@pytest.mark.parametrize("error, code", [
    (StoreError("qdrant server http://q:6333 unreachable", unavailable=True), grpc.StatusCode.UNAVAILABLE),
    (StoreError("segment corrupted"), grpc.StatusCode.INTERNAL),
    (RuntimeError("boom"), grpc.StatusCode.INTERNAL),
])
def test_store_errors_map_to_their_status_codes(error, code):
    _, err = call(SearchServicer(FakeStore(error), 4), "SearchByVector",
                  search_pb2.SearchByVectorRequest(vector=VEC, top_k=3))
    assert err[0] == code and str(error) in err[1]


def test_unknown_product_id_is_not_found():
    _, err = call(SearchServicer(FakeStore(), 4), "SearchById", search_pb2.SearchByIdRequest(product_id="zz", top_k=2))
    assert err == (grpc.StatusCode.NOT_FOUND, "product 'zz' not found")


def test_validation_happens_before_the_store():
    store = FakeStore()
    _, err = call(SearchServicer(store, 4), "SearchByVector", search_pb2.SearchByVectorRequest(vector=VEC, top_k=0))
    assert err[0] == grpc.StatusCode.INVALID_ARGUMENT and not store.calls


def test_scroll_pages_limits_and_offsets():
    store = FakeStore()
    servicer = SearchServicer(store, 4)
    first, err = call(servicer, "ScrollPoints", search_pb2.ScrollPointsRequest(with_vectors=True))
    assert err is None and first.next_offset == "next"
    assert first.points[0].product.id == "a" and first.points[0].product.category == "c"
    assert len(first.points[0].vector) == 16
    assert store.calls[-1] == ("scroll", (256, None, None, True))  # limit 0 = the default
    last, _ = call(servicer, "ScrollPoints", search_pb2.ScrollPointsRequest(
        limit=10, offset="next", filter=types_pb2.Filter(category="c")))
    assert last.next_offset == "" and last.points[0].vector == b""
    assert store.calls[-1][1][:2] == (10, "next") and store.calls[-1][1][2].category == "c"
    for limit in (-1, 1001):
        _, err = call(servicer, "ScrollPoints", search_pb2.ScrollPointsRequest(limit=limit))
        assert err[0] == grpc.StatusCode.INVALID_ARGUMENT and "limit" in err[1]
    _, err = call(servicer, "ScrollPoints", search_pb2.ScrollPointsRequest(offset="bad"))
    assert err[0] == grpc.StatusCode.INVALID_ARGUMENT and "offset" in err[1]


def test_product_ids_are_limited_like_the_gateways():
    store = FakeStore()
    _, err = call(SearchServicer(store, 4), "SearchById",
                  search_pb2.SearchByIdRequest(product_id="x" * (MAX_ID_LENGTH + 1), top_k=2))
    assert err[0] == grpc.StatusCode.INVALID_ARGUMENT and str(MAX_ID_LENGTH) in err[1] and not store.calls
    _, err = call(SearchServicer(store, 4), "SearchById",
                  search_pb2.SearchByIdRequest(product_id="x" * MAX_ID_LENGTH, top_k=2))
    assert err[0] == grpc.StatusCode.NOT_FOUND  # reached the store


def test_product_payload_roundtrip():
    product = types_pb2.Product(id="x", title="T", category="c", attributes={"k": "v"}, image_sha256="ff")
    payload = product_payload(product)
    assert "price" not in payload
    read = payload_product("x", payload)
    assert list(read.image_sha256s) == ["ff"]  # reads list the images (here the one main image)
    read.ClearField("image_sha256s")
    assert read == product
    product.price = 0.0  # a zero price is a price
    assert product_payload(product)["price"] == 0.0
    assert payload_product("x", product_payload(product)).HasField("price")


def test_empty_filter_is_none_and_an_inverted_price_range_is_refused():
    assert to_filter(types_pb2.Filter()) is None
    flt = to_filter(types_pb2.Filter(category="c", min_price=0))
    assert (flt.category, flt.min_price, flt.max_price) == ("c", 0.0, None)
    with pytest.raises(ValueError, match="greater than"):
        to_filter(types_pb2.Filter(min_price=2, max_price=1))
