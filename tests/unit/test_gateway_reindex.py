"""reindex.py over in-memory fakes: copy, resume, catch-up with writes and deletes, refusal on failures,
the switch."""
from __future__ import annotations

import pytest

from lookalike.v1 import lookalike_pb2
from lookalike_gateway.errors import Deadline

from .gateway_fakes import ingest, make_gateway, png, product


@pytest.fixture
def gateway(tmp_path):
    return make_gateway(tmp_path, upsert_batch_size=4)


def reindex(gateway, **fields):
    return list(gateway.reindexer.reindex(lookalike_pb2.ReindexRequest(**fields), lambda: Deadline(10)))


def test_reindex_copies_resumes_and_switches(gateway):
    ingest(gateway, [(product(f"p{i}"), png(i)) for i in range(9)])
    calls = gateway.embedder.calls
    progress = reindex(gateway, collection="products__lookalike-lite0__r2")
    last = progress[-1]
    assert last.finished and not last.activated and last.collection == "products__lookalike-lite0__r2"
    assert last.embedded == 9 and last.failed == 0
    assert gateway.embedder.calls == calls + 9 + 1  # every product, plus the probe of the vector size
    assert gateway.search.stub.active == "products__lookalike-lite0"  # not activated: searches unchanged
    # again: everything is there already (what an interrupted reindex does when called again)
    again = reindex(gateway, collection="products__lookalike-lite0__r2", activate=True)[-1]
    assert (again.embedded, again.unchanged, again.activated) == (0, 9, True)
    assert again.previous == "products__lookalike-lite0"
    assert gateway.search.stub.active == "products__lookalike-lite0__r2"
    assert gateway.collections.active().collection == "products__lookalike-lite0__r2"
    # new writes go to the new collection; rollback points back
    ingest(gateway, [(product("later"), png(50))])
    assert "later" in gateway.search.stub.collections["products__lookalike-lite0__r2"]
    assert gateway.collections.activate("", rollback=True, deadline=Deadline(5)) == (
        "products__lookalike-lite0", "products__lookalike-lite0__r2")


def test_reindex_catches_up_with_writes_and_deletes(gateway):
    ingest(gateway, [(product(f"p{i}"), png(i)) for i in range(6)])
    original = gateway.search.stub.collections["products__lookalike-lite0"]
    gateway.search.stub.CreateCollection(type("R", (), {"name": "products__lookalike-lite0__r2", "vector_size": 8})())
    stale = gateway.search.stub.collections["products__lookalike-lite0__r2"]
    gone = type(original["p0"])()
    gone.CopyFrom(original["p0"])
    gone.product.id = "gone"
    stale["gone"] = gone  # a product deleted from the active collection since
    progress = reindex(gateway, activate=True)
    last = progress[-1]
    assert last.collection == "products__lookalike-lite0__r2"  # the default name is taken: __r2
    assert last.removed == 1 and last.activated
    assert sorted(gateway.search.stub.collections["products__lookalike-lite0__r2"]) == [f"p{i}" for i in range(6)]


def test_reindex_refuses_to_activate_with_failures(gateway):
    ingest(gateway, [(product("p1"), png(1)), (product("p2"), png(2))])
    stored = gateway.search.stub.collections["products__lookalike-lite0"]["p2"].product.image_sha256
    gateway.image_store.path(stored).unlink()  # its original is lost
    with pytest.raises(Exception) as err:
        reindex(gateway, collection="products__lookalike-lite0__r2", activate=True)
    assert "could not be re-embedded" in str(getattr(err.value, "message", err.value))
    assert gateway.search.stub.active == "products__lookalike-lite0"
    forced = reindex(gateway, collection="products__lookalike-lite0__r2", activate=True, force=True)
    assert forced[-1].activated and forced[-1].failed == 1
    failures = [f for p in forced for f in p.failures]
    assert failures and "image store" in failures[0].error
