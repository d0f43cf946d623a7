"""Congruence suite: the same tests over every VectorStore implementation (lookalike_search.store's protocol;
what only qdrant-edge has is in test_search_store_edge.py).

qdrant-local (qdrant-client embedded mode) and qdrant-edge always run; qdrant-server runs only when
LOOKALIKE_TEST_QDRANT_URL points at a Qdrant server (each test uses its own collection).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from lookalike_search.store import (CollectionMismatch, NotFound, SearchFilter, VectorStore,
                                    point_uuid)
from lookalike_search.store_edge import QdrantEdgeStore
from lookalike_search.store_qdrant import QdrantClientStore

DIM = 16
QDRANT_URL = os.environ.get("LOOKALIKE_TEST_QDRANT_URL")
ENGINES = ["qdrant-local", "qdrant-edge",
           pytest.param("qdrant-server", marks=pytest.mark.skipif(
               not QDRANT_URL, reason="set LOOKALIKE_TEST_QDRANT_URL to run against a Qdrant server"))]
CATEGORIES = ["shoes", "shirts", "bags", "hats"]


def open_store(engine: str, where: Path | str, dim: int = DIM, **kwargs) -> VectorStore:
    """A store for engine; `where` is a folder (embedded engines) or a collection name (server)."""
    if engine == "qdrant-local":
        store = QdrantClientStore("products", dim, path=Path(where) / "local", **kwargs)
    elif engine == "qdrant-edge":
        kwargs.setdefault("optimize_idle_s", 0)
        store = QdrantEdgeStore(Path(where) / "edge" / "products", dim, **kwargs)
    else:
        store = QdrantClientStore(str(where), dim, url=QDRANT_URL, **kwargs)
    store.ensure_collection()
    return store


@pytest.fixture
def where(engine, tmp_path):
    if engine != "qdrant-server":
        yield tmp_path
        return
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    from qdrant_client import QdrantClient
    QdrantClient(url=QDRANT_URL).delete_collection(name)


@pytest.fixture
def store(engine, where):
    opened = open_store(engine, where)
    yield opened
    opened.close()


def pytest_generate_tests(metafunc):
    if "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", ENGINES)


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    """60 points in 4 tight-ish clusters on the sphere; every 7th point has no price."""
    rng = np.random.default_rng(7)
    centers = unit(rng.standard_normal((4, DIM)))
    ids, vectors, payloads = [], [], []
    for i in range(60):
        c = i % 4
        vectors.append(unit(centers[c] + 0.35 * rng.standard_normal(DIM)).astype(np.float32))
        ids.append(f"sku-{i:03d}/{'é' if i % 5 == 0 else 'x'}")  # arbitrary strings, not UUIDs
        payload = {"title": f"item {i}", "category": CATEGORIES[(i // 4 + c) % 4],
                   "attributes": {"colour": ["red", "blue", "green"][i % 3], "size": str(i % 5)},
                   "image_sha256": f"{i:064x}"}
        if i % 7:
            payload["price"] = float(5 + (i * 37) % 100)
        payloads.append(payload)
    return ids, np.stack(vectors), payloads


def load(store, data):
    ids, vectors, payloads = data
    assert store.upsert(list(zip(ids, vectors, payloads))) == len(ids)


def exact(data, query, top_k, flt: SearchFilter | None = None, exclude: str | None = None):
    """Ground truth: cosine top_k by numpy."""
    ids, vectors, payloads = data
    scores = unit(vectors) @ unit(query)
    order = [i for i in np.argsort(-scores, kind="stable")
             if (flt is None or flt.matches({**payloads[i], "price": payloads[i].get("price")}))
             and ids[i] != exclude]
    return [ids[i] for i in order[:top_k]], [float(scores[i]) for i in order[:top_k]]


def check_hits(hits, expected_ids, expected_scores):
    assert [h.product_id for h in hits] == expected_ids
    np.testing.assert_allclose([h.score for h in hits], expected_scores, atol=1e-4)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


# ---- the suite ----------------------------------------------------------------------------------------

def test_upsert_get_roundtrip(store, data):
    load(store, data)
    ids, vectors, payloads = data
    wanted = [ids[5], "missing", ids[0], ids[5], ids[42]]
    records = store.get(wanted, with_vectors=True)
    assert [r.product_id for r in records] == [ids[5], ids[0], ids[42]]  # request order, existing, once
    for r in records:
        i = ids.index(r.product_id)
        assert r.payload["product_id"] == ids[i]
        assert r.payload["title"] == payloads[i]["title"]
        assert r.payload["category"] == payloads[i]["category"]
        assert r.payload["attributes"] == payloads[i]["attributes"]
        assert r.payload["image_sha256"] == payloads[i]["image_sha256"]
        assert r.payload.get("price") == payloads[i].get("price")
        assert r.vector.dtype == np.float32 and r.vector.shape == (DIM,)
        np.testing.assert_allclose(r.vector, unit(vectors[i]), atol=1e-5)  # stored unit-normalised
    assert all(r.vector is None for r in store.get([ids[1]]))
    assert store.get([]) == []
    assert store.count() == len(ids)


def test_search_is_exact_on_small_data(store, data):
    load(store, data)
    ids, vectors, _ = data
    rng = np.random.default_rng(1)
    for query in [vectors[3], vectors[17] * 5.0, rng.standard_normal(DIM).astype(np.float32)]:
        hits = store.search(query, 10)
        check_hits(hits, *exact(data, query, 10))
    hits = store.search(vectors[3], 1)
    assert hits[0].product_id == ids[3] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert len(store.search(vectors[0], 500)) == len(ids)  # top_k above the collection size


@pytest.mark.parametrize("flt", [
    SearchFilter(category="shoes"),
    SearchFilter(min_price=20, max_price=60),
    SearchFilter(min_price=42.0),
    SearchFilter(max_price=30.0),
    SearchFilter(category="bags", min_price=10, max_price=80),
], ids=["category", "price-range", "price-min", "price-max", "both"])
def test_filters(store, data, flt):
    load(store, data)
    _, vectors, payloads = data
    query = vectors[8]
    expected_ids, expected_scores = exact(data, query, 10, flt)
    assert expected_ids  # the filter matches something
    hits = store.search(query, 10, flt)
    check_hits(hits, expected_ids, expected_scores)
    for h in hits:
        assert flt.matches(h.payload)
    assert store.count(flt) == sum(flt.matches(p) for p in payloads)


def test_price_range_is_inclusive_and_skips_unpriced(store, data):
    load(store, data)
    _, vectors, payloads = data
    price = payloads[1]["price"]
    hits = store.search(vectors[0], 100, SearchFilter(min_price=price, max_price=price))
    assert hits and all(h.payload["price"] == price for h in hits)
    assert store.count(SearchFilter(min_price=-1e9)) == sum("price" in p for p in payloads)
    assert store.count(SearchFilter(category="no-such-category")) == 0
    assert store.search(vectors[0], 5, SearchFilter(category="no-such-category")) == []


def test_search_by_id_excludes_self(store, data):
    load(store, data)
    ids, vectors, _ = data
    hits = store.search_by_id(ids[10], 5)
    assert ids[10] not in [h.product_id for h in hits]
    check_hits(hits, *exact(data, vectors[10], 5, exclude=ids[10]))
    flt = SearchFilter(category="hats", max_price=90)
    check_hits(store.search_by_id(ids[10], 5, flt), *exact(data, vectors[10], 5, flt, exclude=ids[10]))
    with pytest.raises(NotFound) as err:
        store.search_by_id("nope", 5)
    assert isinstance(err.value, KeyError) and "nope" in str(err.value)


def test_delete_counts(store, data):
    load(store, data)
    ids, _, _ = data
    assert store.delete([ids[0], ids[1], ids[1], "missing"]) == 2
    assert store.delete([ids[0]]) == 0
    assert store.delete([]) == 0
    assert store.count() == len(ids) - 2
    assert store.get([ids[0], ids[1]]) == []
    assert ids[0] not in [h.product_id for h in store.search(data[1][0], 10)]
    with pytest.raises(NotFound):
        store.search_by_id(ids[0], 3)


def test_count_with_filter(store, data):
    assert store.count() == 0
    load(store, data)
    _, _, payloads = data
    for category in CATEGORIES:
        assert store.count(SearchFilter(category=category)) == sum(p["category"] == category for p in payloads)
    assert store.count(SearchFilter()) == len(payloads)


def test_reupsert_updates_in_place(store, data):
    load(store, data)
    ids, vectors, payloads = data
    new_vector = -vectors[4]
    new_payload = {"title": "renamed", "category": "hats", "price": 1.5, "attributes": {}}
    assert store.upsert([(ids[4], new_vector, new_payload)]) == 1
    assert store.count() == len(ids)  # no duplicate
    record = store.get([ids[4]], with_vectors=True)[0]
    assert record.payload["title"] == "renamed" and record.payload["price"] == 1.5
    assert "image_sha256" not in record.payload  # replaced, not merged
    np.testing.assert_allclose(record.vector, unit(new_vector), atol=1e-5)
    assert store.search(new_vector, 1)[0].product_id == ids[4]
    # the same id twice in one batch: the last one wins
    assert store.upsert([(ids[7], vectors[7], {"title": "a"}), (ids[7], vectors[7], {"title": "b"})]) == 1
    assert store.get([ids[7]])[0].payload["title"] == "b"
    assert store.count() == len(ids)


def scroll_all(store, limit, flt=None, with_vectors=False):
    """Every page of a scroll; asserts the page sizes."""
    pages, offset = [], None
    while True:
        records, offset = store.scroll(limit, offset, flt, with_vectors)
        assert len(records) <= limit
        pages.append(records)
        if offset is None:
            return pages
        assert isinstance(offset, str) and offset
        assert len(pages) < 100, "scroll does not end"


@pytest.mark.parametrize("flt", [None, SearchFilter(category="shoes"), SearchFilter(min_price=20, max_price=60)],
                         ids=["all", "category", "price"])
def test_scroll_pages_through_every_point_once(store, data, flt):
    assert store.scroll(5) == ([], None)  # empty collection
    load(store, data)
    ids, vectors, payloads = data
    pages = scroll_all(store, 7, flt, with_vectors=True)
    records = [r for page in pages for r in page]
    expected = [pid for pid, p in zip(ids, payloads) if flt is None or flt.matches(p)]
    assert sorted(r.product_id for r in records) == sorted(expected)  # each once
    assert all(len(page) == 7 for page in pages[:-1])
    # stable order: by point id, the same on every engine
    assert [r.product_id for r in records] == sorted(expected, key=lambda pid: str(point_uuid(pid)))
    for r in records:
        i = ids.index(r.product_id)
        assert r.payload["title"] == payloads[i]["title"] and r.payload["category"] == payloads[i]["category"]
        assert r.payload["attributes"] == payloads[i]["attributes"]
        assert r.payload.get("price") == payloads[i].get("price")
        assert r.vector.dtype == np.float32 and r.vector.shape == (DIM,)
        np.testing.assert_allclose(r.vector, unit(vectors[i]), atol=1e-5)
    without = [r for page in scroll_all(store, 100, flt) for r in page]
    assert [r.product_id for r in without] == [r.product_id for r in records]
    assert all(r.vector is None for r in without)


def test_scroll_after_delete_and_bad_arguments(store, data):
    load(store, data)
    ids, _, _ = data
    first, offset = store.scroll(10)
    store.delete([r.product_id for r in first[:3]])
    rest = [r.product_id for page in scroll_all(store, 25) for r in page]
    assert len(rest) == len(ids) - 3 and not set(rest) & {r.product_id for r in first[:3]}
    second, _ = store.scroll(10, offset)  # an offset stays valid across writes
    assert second and second[0].product_id not in {r.product_id for r in first}
    with pytest.raises(ValueError, match="offset"):
        store.scroll(5, "not-an-offset")
    with pytest.raises(ValueError, match="limit"):
        store.scroll(0)


def test_bad_vectors_ids_and_filters_are_refused_before_any_write(store):
    with pytest.raises(ValueError, match="dimensions"):
        store.upsert([("a", np.ones(DIM + 1), {})])
    with pytest.raises(ValueError, match="non-finite"):
        store.search(np.full(DIM, np.nan), 3)
    with pytest.raises(ValueError, match="zeros"):
        store.upsert([("a", np.zeros(DIM), {})])
    with pytest.raises(ValueError, match="product id"):
        store.upsert([("", np.ones(DIM), {})])
    with pytest.raises(ValueError, match="min_price"):
        SearchFilter(min_price=5, max_price=1)
    assert store.count() == 0


def test_persistence_after_reopen(engine, where, data):
    first = open_store(engine, where)
    load(first, data)
    first.delete([data[0][2]])
    first.close()
    second = open_store(engine, where)
    try:
        ids, vectors, payloads = data
        assert second.count() == len(ids) - 1
        assert second.get([ids[2]]) == []
        record = second.get([ids[3]], with_vectors=True)[0]
        assert record.payload["title"] == payloads[3]["title"]
        np.testing.assert_allclose(record.vector, unit(vectors[3]), atol=1e-5)
        check_hits(second.search(vectors[9], 5), *exact(data, vectors[9], 5, exclude=ids[2]))
        assert second.count(SearchFilter(category="shoes")) == sum(
            p["category"] == "shoes" for i, p in enumerate(payloads) if i != 2)
    finally:
        second.close()


def test_wrong_vector_size_is_refused(engine, where):
    open_store(engine, where).close()
    with pytest.raises(CollectionMismatch, match="vector size 16"):
        open_store(engine, where, dim=DIM * 2)


# ---- kill -9 durability -------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[3])
    from test_search_store import open_store, child_point
    store = open_store(sys.argv[1], sys.argv[2], **json.loads(sys.argv[4]))
    batch = 0
    while True:
        points = [child_point(batch, j) for j in range(25)]
        store.upsert(points)
        print("ACK " + " ".join(p[0] for p in points), flush=True)
        batch += 1
""")


def child_point(batch: int, j: int):
    pid = f"b{batch}-p{j}"
    rng = np.random.default_rng(batch * 1000 + j)
    return pid, rng.standard_normal(DIM).astype(np.float32), {"title": f"t{batch}.{j}", "category": "c",
                                                              "price": float(batch * 100 + j)}


def test_kill9_keeps_every_acknowledged_write(engine, where):
    kill9_writer_then_check(engine, where, {})


def kill9_writer_then_check(engine, where, store_kwargs: dict):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, engine, str(where), str(Path(__file__).parent),
                             json.dumps(store_kwargs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while len(acked) < 8 * 25 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("ACK "):
                acked += line.split()[1:]
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the child never stops writing on its own
    finally:
        proc.kill()
        proc.wait(timeout=30)
        stderr = proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 8 * 25, f"child acknowledged only {len(acked)} points; stderr:\n{stderr[-3000:]}"
    store = open_store(engine, where)
    try:
        records = {r.product_id: r for r in store.get(acked, with_vectors=True)}
        missing = [pid for pid in acked if pid not in records]
        assert not missing, f"{len(missing)} acknowledged points lost after kill -9, e.g. {missing[:5]}"
        for pid in acked:
            batch, j = (int(x[1:]) for x in pid.split("-"))
            _, vector, payload = child_point(batch, j)
            assert records[pid].payload["title"] == payload["title"]
            assert records[pid].payload["price"] == payload["price"]
            np.testing.assert_allclose(records[pid].vector, unit(vector), atol=1e-5)
        assert store.count() >= len(acked)
        check = store.search(records[acked[-1]].vector, 1)
        assert check[0].product_id == acked[-1]
    finally:
        store.close()


# ---- point ids ----------------------------------------------------------------------------------------

def test_point_ids_are_uuid5_of_product_id():
    assert point_uuid("sku-1") == point_uuid("sku-1") != point_uuid("sku-2")
    assert point_uuid("sku-1").version == 5
    assert point_uuid("sku-1") == uuid.uuid5(uuid.UUID("5b0e1c7a-8f3d-5e2b-9a41-6c2d7f1e0b93"), "sku-1")
