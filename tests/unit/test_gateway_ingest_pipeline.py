"""ingest_pipeline.py over in-memory fakes: outcomes, idempotence, duplicates, hostile items, order across
concurrent batches, cancellation, acknowledgements while the client waits."""
from __future__ import annotations

import struct
import threading
import zlib

import numpy as np
import pytest

from lookalike_gateway.errors import Deadline
from lookalike_gateway.ingest_types import CREATED, FAILED, SKIPPED, UNCHANGED, UPDATED, IngestItem

from .gateway_fakes import FakeEmbedder, as_items, ingest, make_gateway, png, product, unit


def png_bomb(side: int = 100_000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


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


def test_a_cancelled_stream_stores_nothing_more(gateway):
    stored = gateway.search.stub.collections["products__lookalike-lite0"]
    gone = threading.Event()

    def items():
        for i in range(12):
            if i == 4:
                gone.wait(60)  # the first batch (4 items) is committed before the client goes away
            yield product(f"c{i}"), png(100 + i)

    results = []
    for result in gateway.ingest_pipeline.run(as_items(items()), lambda: Deadline(10), cancelled=gone.is_set):
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
    for result in gateway.ingest_pipeline.run(as_items(items()), lambda: Deadline(10)):
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
