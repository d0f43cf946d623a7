"""lookalike_search.registry: the collections of a search service and its alias (first start, switch, rollback,
catalogues from before aliases, switching under load, the servicer routing by collection)."""
from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from lookalike.search.v1 import search_pb2
from lookalike.v1 import types_pb2
from lookalike.vectors import pack
from lookalike_search.registry import CollectionRegistry
from lookalike_search.servicer import SearchServicer
from lookalike_search.settings import SearchSettings
from lookalike_search.store import CollectionMismatch, NotFound

DIM = 4


def settings(tmp_path, engine, **kw):
    return SearchSettings(data_dir=tmp_path, engine=engine, vector_size=DIM, edge_optimize_idle_s=0, **kw)


@pytest.fixture(params=["qdrant-local", "qdrant-edge"])
def engine(request):
    return request.param


def point(pid: str, vector) -> tuple:
    return pid, np.asarray(vector, dtype=np.float32), {"title": pid, "category": "c"}


def test_first_start_creates_the_initial_collection_and_the_alias(tmp_path, engine):
    cols = CollectionRegistry.from_settings(settings(tmp_path, engine))
    cols.open()
    assert cols.active().name == "products__lookalike-lite0"
    name, store = cols.get("")
    assert name == "products__lookalike-lite0" and cols.get("products")[1] is store
    store.upsert([point("x", [1, 0, 0, 0])])
    cols.close()
    again = CollectionRegistry.from_settings(settings(tmp_path, engine))
    again.open()
    assert again.get("")[1].count() == 1
    again.close()
    wrong = CollectionRegistry.from_settings(settings(tmp_path, engine).model_copy(update={"vector_size": DIM * 2}))
    with pytest.raises(CollectionMismatch, match="LOOKALIKE_SEARCH_VECTOR_SIZE"):
        wrong.open()
    wrong.close()


def test_switch_rollback_and_persisted_alias(tmp_path, engine):
    cols = CollectionRegistry.from_settings(settings(tmp_path, engine))
    cols.open()
    old = cols.active().name
    cols.get("")[1].upsert([point("old", [1, 0, 0, 0])])
    store, created = cols.create("products__m2", 8)  # another model: another vector size
    assert created and store.vector_size == 8
    assert cols.create("products__m2", 8)[1] is False
    with pytest.raises(CollectionMismatch):
        cols.create("products__m2", 16)
    with pytest.raises(ValueError):
        cols.create("products")  # the alias
    store.upsert([point("new", [0, 1, 0, 0, 0, 0, 0, 1])])
    assert cols.set_alias("products__m2") == ("products__m2", old)
    assert [h.product_id for h in cols.get("")[1].search(np.ones(8, dtype=np.float32), 5)] == ["new"]
    assert cols.get(old)[1].count() == 1  # the old one stays, for rollback
    active, previous, rows = cols.describe(with_counts=True)
    assert (active, previous) == ("products__m2", old)
    assert sorted(rows) == sorted([(old, DIM, 1), ("products__m2", 8, 1)])
    with pytest.raises(NotFound):
        cols.get("products__nope")
    with pytest.raises(NotFound):
        cols.set_alias("products__nope")
    cols.close()
    reopened = CollectionRegistry.from_settings(settings(tmp_path, engine))
    reopened.open()
    assert reopened.active().name == "products__m2"
    assert reopened.set_alias(old) == (old, "products__m2")  # rollback
    reopened.close()


def test_catalogue_from_before_aliases_stays_active(tmp_path, engine):
    legacy = CollectionRegistry.from_settings(settings(tmp_path, engine, initial_collection="products"))
    legacy.open()  # what an old service created: a collection named like the alias
    legacy.get("")[1].upsert([point("kept", [1, 1, 0, 0])])
    legacy.close()
    (tmp_path / engine / "aliases.json").unlink()  # old services wrote no alias
    cols = CollectionRegistry.from_settings(settings(tmp_path, engine))
    cols.open()
    assert cols.active().name == "products" and cols.get("")[1].count() == 1
    cols.create("products__lookalike-lite0__r2")
    assert cols.set_alias("products__lookalike-lite0__r2")[1] == "products"
    cols.close()


def test_searches_during_switches_never_fail(tmp_path, engine):
    cols = CollectionRegistry.from_settings(settings(tmp_path, engine))
    cols.open()
    a = cols.active().name
    cols.get("")[1].upsert([point("in-a", [1, 0, 0, 0])])
    cols.create("products__b")[0].upsert([point("in-b", [1, 0, 0, 0])])
    servicer = SearchServicer(cols)
    errors, seen = [], set()
    stop = threading.Event()

    class Context:
        def abort(self, code, details):
            raise AssertionError(f"{code}: {details}")

    def query():
        while not stop.is_set():
            try:
                response = servicer.SearchByVector(search_pb2.SearchByVectorRequest(
                    vector=pack(np.ones(DIM, dtype=np.float32)), top_k=1), Context())
                seen.add(response.results[0].product.id)
            except Exception as exc:  # noqa: BLE001 - any failure counts
                errors.append(exc)

    thread = threading.Thread(target=query)
    thread.start()
    for i in range(20):
        cols.set_alias("products__b" if i % 2 == 0 else a)
    stop.set()
    thread.join()
    assert errors == [] and seen <= {"in-a", "in-b"}
    cols.close()


def test_servicer_routes_by_collection(tmp_path):
    cols = CollectionRegistry.from_settings(settings(tmp_path, "qdrant-local"))
    cols.open()
    servicer = SearchServicer(cols)

    class Context:
        def abort(self, code, details):
            self.code, self.details = code, details
            raise grpc.RpcError(details)

    ctx = Context()
    created = servicer.CreateCollection(search_pb2.CreateCollectionRequest(name="products__x", vector_size=DIM), ctx)
    assert created.created and created.collection.vector_size == DIM and not created.collection.active
    servicer.UpsertPoints(search_pb2.UpsertPointsRequest(collection="products__x", points=[search_pb2.Point(
        product=types_pb2.Product(id="p1"), vector=pack(np.ones(DIM, dtype=np.float32)))]), ctx)
    assert servicer.CountPoints(search_pb2.CountPointsRequest(), ctx).count == 0  # the active one
    assert servicer.CountPoints(search_pb2.CountPointsRequest(collection="products__x"), ctx).count == 1
    with pytest.raises(grpc.RpcError):
        servicer.CountPoints(search_pb2.CountPointsRequest(collection="products__missing"), ctx)
    assert ctx.code == grpc.StatusCode.NOT_FOUND and "products__missing" in ctx.details
    switched = servicer.SetAlias(search_pb2.SetAliasRequest(collection="products__x"), ctx)
    assert (switched.active, switched.previous) == ("products__x", "products__lookalike-lite0")
    listed = servicer.ListCollections(search_pb2.ListCollectionsRequest(with_counts=True), ctx)
    assert listed.alias == "products" and listed.active == "products__x"
    assert {(c.name, c.points, c.active) for c in listed.collections} == {
        ("products__lookalike-lite0", 0, False), ("products__x", 1, True)}
    with pytest.raises(grpc.RpcError):
        servicer.CreateCollection(search_pb2.CreateCollectionRequest(name="products__x", vector_size=DIM + 1), ctx)
    assert ctx.code == grpc.StatusCode.FAILED_PRECONDITION
    cols.close()
