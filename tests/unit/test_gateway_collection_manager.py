"""collection_manager.py over in-memory fakes: writes wait for an alias switch and land in the new
collection; a switch made by another gateway is picked up in the background."""
from __future__ import annotations

import threading
import time

import pytest

from lookalike_gateway.errors import Deadline
from lookalike_gateway.ingest_types import CREATED

from .gateway_fakes import ingest, make_gateway, png, product


@pytest.fixture
def gateway(tmp_path):
    return make_gateway(tmp_path, upsert_batch_size=4)


def test_writes_wait_for_the_switch_and_land_in_the_new_collection(gateway):
    ingest(gateway, [(product("p1"), png(1))])
    gateway.search.stub.CreateCollection(type("R", (), {"name": "products__lookalike-lite0__r2", "vector_size": 8})())
    results = []
    with gateway.collections.gate.exclusive():  # what activation holds
        writer = threading.Thread(target=lambda: results.extend(ingest(gateway, [(product("p2"), png(2))])))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive()  # prepared, waiting to commit
        gateway.collections.switch("products__lookalike-lite0__r2", Deadline(5))
    writer.join(10)
    assert [r.outcome for r in results] == [CREATED]
    assert "p2" in gateway.search.stub.collections["products__lookalike-lite0__r2"]
    assert "p2" not in gateway.search.stub.collections["products__lookalike-lite0"]


def test_a_switch_made_elsewhere_is_picked_up_in_the_background(gateway, monkeypatch):
    import lookalike_gateway.collection_manager as collection_manager

    monkeypatch.setattr(collection_manager, "ALIAS_REFRESH_S", 0.05)
    assert gateway.collections.active().collection == "products__lookalike-lite0"
    gateway.search.stub.CreateCollection(type("R", (), {"name": "products__other.2", "vector_size": 8})())
    gateway.search.stub.active = "products__other.2"  # another gateway switched the alias
    deadline = time.monotonic() + 60
    while gateway.collections.active().collection != "products__other.2":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    active = gateway.collections.active()
    assert active.model_id == "other.2" and active.embedder.model_name == "other"  # queries use its model
    assert active.embedder.model_version == "2"
