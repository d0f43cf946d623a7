"""The gateway's ingest pipeline and reindex over in-memory fakes: outcomes, idempotence, duplicates,
hostile items, order across concurrent batches, catch-up and alias switch."""
from __future__ import annotations

import struct
import threading
import time
import zlib

import numpy as np
import pytest

from lookalike.v1 import lookalike_pb2, types_pb2
from lookalike_gateway.errors import Deadline
from lookalike_gateway.ingest_types import CREATED, FAILED, SKIPPED, UNCHANGED, UPDATED, IngestItem, same_metadata

from .gateway_fakes import FakeEmbedder, FakeSearch, make_gateway, png, unit


def png_bomb(side: int = 100_000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def product(pid: str, **fields) -> types_pb2.Product:
    return types_pb2.Product(id=pid, title=fields.pop("title", f"title {pid}"), **fields)


def ingest(gateway, items, **kw):
    return list(gateway.ingest_pipeline.run(items, lambda: Deadline(10), **kw))


@pytest.fixture
def gateway(tmp_path):
    return make_gateway(tmp_path, upsert_batch_size=4)


def test_rerun_is_unchanged_without_embedding_or_writing(gateway):
    items = [(product(f"p{i}", category="c", price=float(i)), png(i)) for i in range(10)]
    first = ingest(gateway, items)
    assert [r.product_id for r in first] == [f"p{i}" for i in range(10)]  # in order across batches
    assert {r.outcome for r in first} == {CREATED} and gateway.embedder.calls == 10
    upserts = gateway.search.stub.calls["UpsertPoints"]
    again = ingest(gateway, items)
    assert [r.outcome for r in again] == [UNCHANGED] * 10
    assert gateway.embedder.calls == 10 and gateway.search.stub.calls["UpsertPoints"] == upserts
    stored = gateway.search.stub.collections["products__lookalike-lite0"]
    assert sorted(stored) == sorted(f"p{i}" for i in range(10))
    assert all(gateway.image_store.exists(p.product.image_sha256) for p in stored.values())


def test_changes_are_updated_in_place(gateway):
    ingest(gateway, [(product("a", price=1.0), png(1)), (product("b"), png(2))])
    calls = gateway.embedder.calls
    results = ingest(gateway, [(product("a", price=2.0), png(1)),  # metadata only: the vector is reused
                               (product("b"), png(3))])  # another image: embedded again
    assert [r.outcome for r in results] == [UPDATED, UPDATED]
    assert gateway.embedder.calls == calls + 1
    stored = gateway.search.stub.collections["products__lookalike-lite0"]
    assert stored["a"].product.price == 2.0
    assert np.allclose(np.frombuffer(stored["b"].vector, "<f4"), gateway.embedder.vector(png(3)), atol=1e-6)
    # attributes count as metadata too
    assert ingest(gateway, [(product("a", price=2.0, attributes={"colour": "red"}), png(1))])[0].outcome == UPDATED


@pytest.mark.parametrize("image, reason", [
    (b"", "empty"),
    (b"not an image at all", "image"),
    (png(5)[:40], "image"),  # truncated
    (None, "pixels"),  # a decompression bomb: a PNG header claiming 10 gigapixels
])
def test_a_hostile_item_fails_alone(gateway, image, reason):
    image = png_bomb() if image is None else image
    results = ingest(gateway, [(product("good-1"), png(1)), (product("bad"), image), (product("good-2"), png(2))])
    assert [r.outcome for r in results] == [CREATED, FAILED, CREATED]
    assert reason in results[1].error.message
    assert "bad" not in gateway.search.stub.collections["products__lookalike-lite0"]


def test_bad_ids_and_prices_fail_alone(gateway):
    results = ingest(gateway, [(product(""), png(1)), (product("x" * 600), png(2)),
                               (product("nan", price=float("nan")), png(3)), (product("ok"), png(4))])
    assert [r.outcome for r in results] == [FAILED, FAILED, FAILED, CREATED]


def test_exact_duplicates_are_reported_and_optionally_skipped(gateway):
    ingest(gateway, [(product("orig"), png(7))])
    reported = ingest(gateway, [(product("copy"), png(7))])[0]
    assert (reported.outcome, reported.duplicate_of, reported.exact_duplicate) == (CREATED, "orig", True)
    assert reported.duplicate_similarity == pytest.approx(1.0, abs=1e-5)
    skipped = ingest(gateway, [IngestItem(product("copy-2"), png(7), skip_duplicates=True)])[0]
    assert (skipped.outcome, skipped.duplicate_of, skipped.ok) == (SKIPPED, "orig", True)
    assert "copy-2" not in gateway.search.stub.collections["products__lookalike-lite0"]
    # re-sending the original itself is no duplicate of anything
    assert ingest(gateway, [(product("orig", title="renamed"), png(7))])[0].duplicate_of == ""


def test_near_duplicates_use_the_configured_distance(tmp_path):
    base = unit(np.arange(1, 9))
    near = unit(base + 0.01 * np.eye(8)[0])  # cosine distance ~1e-5
    far = unit(np.arange(8, 0, -1))
    embedder = FakeEmbedder({png(1): base, png(2): near, png(3): far})
    gateway = make_gateway(tmp_path, embedder=embedder, duplicate_max_distance=0.01)
    results = ingest(gateway, [(product("a"), png(1)), (product("b"), png(2)), (product("c"), png(3))])
    # all three in one batch: the later items are compared with the earlier ones too
    assert [(r.duplicate_of, r.exact_duplicate) for r in results] == [("", False), ("a", False), ("", False)]
    assert results[1].duplicate_similarity > 0.99
    strict = make_gateway(tmp_path / "strict", embedder=embedder, duplicate_max_distance=0.0)
    ingest(strict, [(product("a"), png(1))])
    assert ingest(strict, [(product("b"), png(2))])[0].duplicate_of == ""
    off = make_gateway(tmp_path / "off", embedder=embedder, detect_duplicates=False)
    ingest(off, [(product("a"), png(1))])
    assert ingest(off, [(product("b"), png(1))])[0].duplicate_of == ""
    assert "SearchByVector" not in off.search.stub.calls


def test_same_metadata_ignores_a_predicted_category():
    sent = product("p", title="t")
    stored = product("p", title="t", category="shoes",
                     attributes={"category_predicted": "true", "category_probability": "0.91"})
    assert same_metadata(stored, sent)
    assert not same_metadata(stored, product("p", title="t", category="bags"))
    assert not same_metadata(product("p", title="t", price=1.0), sent)


def test_to_proto_carries_the_outcome(gateway):
    ingest(gateway, [(product("o"), png(9))])
    result = ingest(gateway, [(product("d"), png(9)), (product("x"), b"junk")])
    protos = [r.to_proto() for r in result]
    assert protos[0].outcome == lookalike_pb2.UpsertProductsResponse.CREATED and protos[0].duplicate_of == "o"
    assert protos[1].outcome == lookalike_pb2.UpsertProductsResponse.FAILED and not protos[1].ok and protos[1].error


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


def test_a_cancelled_stream_stores_nothing_more(gateway):
    stored = gateway.search.stub.collections["products__lookalike-lite0"]
    gone = threading.Event()

    def items():
        for i in range(12):
            if i == 4:
                gone.wait(60)  # the first batch (4 items) is committed before the client goes away
            yield product(f"c{i}"), png(100 + i)

    results = []
    for result in gateway.ingest_pipeline.run(items(), lambda: Deadline(10), cancelled=gone.is_set):
        results.append(result)
        if len(results) == 4:
            gone.set()  # the client is killed after its first acknowledgements
    assert [r.outcome for r in results[:4]] == [CREATED] * 4
    assert all(r.outcome == FAILED and "cancelled" in r.error.message for r in results[4:])
    assert sorted(stored) == [f"c{i}" for i in range(4)]


def test_acks_flow_while_the_client_waits_for_them(gateway):
    acked = threading.Event()

    def items():  # a client that sends the next product only after the previous one's acknowledgement
        for i in range(3):
            yield product(f"w{i}"), png(200 + i)
            assert acked.wait(60), "the acknowledgement never came"
            acked.clear()

    results = []
    for result in gateway.ingest_pipeline.run(items(), lambda: Deadline(10)):
        results.append(result)
        acked.set()
    assert [r.outcome for r in results] == [CREATED] * 3


def test_repeated_images_in_one_stream_are_skipped_without_embedding(tmp_path):
    gateway = make_gateway(tmp_path, upsert_batch_size=12)
    items = [IngestItem(product(f"r{i}"), png(i % 3), skip_duplicates=True) for i in range(12)]
    results = ingest(gateway, items)
    assert [r.outcome for r in results[:3]] == [CREATED] * 3
    assert all(r.outcome == SKIPPED and r.exact_duplicate for r in results[3:])
    assert [r.duplicate_of for r in results[3:6]] == ["r0", "r1", "r2"]
    assert gateway.embedder.calls == 3  # one embedding per distinct image

    # later in a stream, once the first is stored: skipped from the stream's own memory, no embedding
    stored = threading.Event()

    def stream():
        yield IngestItem(product("x1"), png(50))
        assert stored.wait(60)
        yield IngestItem(product("x2"), png(50), skip_duplicates=True)

    later = []
    for result in gateway.ingest_pipeline.run(stream(), lambda: Deadline(10)):
        later.append(result)
        stored.set()
    assert [r.outcome for r in later] == [CREATED, SKIPPED] and later[1].duplicate_of == "x1"
    assert gateway.embedder.calls == 4


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


def test_an_embedder_coming_back_is_ready_only_once_its_worker_answers(tmp_path):
    """A restarted TorchServe answers Ping "Healthy" while its model still loads (requests would queue until
    their deadline): readiness also asks for an answer from the worker, on the way (back) up only."""
    class Loading(FakeEmbedder):
        loaded, probes = False, 0

        def model_ready(self, timeout=1.0):
            self.probes += 1
            return self.loaded

    embedder = Loading()
    gateway = make_gateway(tmp_path, embedder=embedder)
    assert gateway.dependencies(timeout=0.5).embedder is False
    embedder.loaded = True
    assert gateway.dependencies(timeout=0.5).embedder is True
    gateway.dependencies(timeout=0.5)
    assert embedder.probes == 2  # not probed again while it stays up
