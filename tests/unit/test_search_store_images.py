"""Congruence suite, products with several images: the same tests over every VectorStore implementation
(the engines and fixtures of test_search_store)."""
from __future__ import annotations

import numpy as np
import pytest

from lookalike_search.store import SearchFilter, point_uuid

from .test_search_store import DIM, open_store, pytest_generate_tests, store, unit, where  # noqa: F401

HASHES = [f"{i:064x}" for i in range(1000)]


@pytest.fixture(scope="module")
def catalogue():
    """40 products with 1..4 images each (image vectors near a per-product direction), categories, prices."""
    rng = np.random.default_rng(11)
    products = []
    next_hash = 0
    for i in range(40):
        n = 1 + i % 4
        base = rng.standard_normal(DIM)
        vecs = unit(base + 0.9 * rng.standard_normal((n, DIM))).astype(np.float32)
        hashes = HASHES[next_hash:next_hash + n]
        next_hash += n
        payload = {"title": f"p{i}", "category": ["shoes", "bags"][i % 2], "image_sha256": hashes[0],
                   "image_sha256s": hashes, "price": float(i)}
        products.append((f"p{i}", vecs, payload))
    return products


def brute_force(products, query: np.ndarray, top_k: int, flt: SearchFilter | None = None, exclude: str | None = None):
    """(product id, best score, best image) of the top_k products by their best-matching image."""
    q = query / np.linalg.norm(query)
    rows = []
    for pid, vecs, payload in products:
        if pid == exclude or (flt is not None and not flt.matches({**payload, "product_id": pid})):
            continue
        sims = vecs @ q
        rows.append((pid, float(sims.max()), int(sims.argmax())))
    return sorted(rows, key=lambda r: -r[1])[:top_k]


def test_products_with_images_roundtrip(store, catalogue):
    assert store.upsert(catalogue) == 40
    assert store.count() == 40
    assert store.count(images=True) == sum(len(v) for _, v, _ in catalogue)
    assert store.count(SearchFilter(category="shoes")) == 20
    records = store.get(["p3", "p0", "missing"], with_vectors=True)
    assert [r.product_id for r in records] == ["p3", "p0"]
    p3 = catalogue[3]
    assert records[0].payload["image_sha256s"] == p3[2]["image_sha256s"]
    assert records[0].payload["image_sha256"] == p3[2]["image_sha256s"][0]
    assert records[0].vectors.shape == (4, DIM)
    np.testing.assert_allclose(records[0].vectors, p3[1], atol=1e-5)
    np.testing.assert_allclose(records[0].vector, p3[1][0], atol=1e-5)
    assert records[1].vectors.shape == (1, DIM)
    plain = store.get(["p3"])[0]
    assert plain.vector is None and plain.vectors is None


@pytest.mark.parametrize("flt", [None, SearchFilter(category="bags"), SearchFilter(min_price=10, max_price=30)])
def test_search_answers_distinct_products_at_their_best_image(store, catalogue, flt):
    store.upsert(catalogue)
    rng = np.random.default_rng(5)
    for _ in range(8):
        query = rng.standard_normal(DIM).astype(np.float32)
        hits = store.search(query, 10, flt)
        expected = brute_force(catalogue, query, 10, flt)
        assert [h.product_id for h in hits] == [pid for pid, _, _ in expected]
        assert len({h.product_id for h in hits}) == len(hits)
        np.testing.assert_allclose([h.score for h in hits], [s for _, s, _ in expected], atol=1e-5)
        assert [h.image for h in hits] == [i for _, _, i in expected]
    # an exact image of a product's third photo finds that product first, at that image
    pid, vecs, payload = catalogue[6]
    top = store.search(vecs[2], 3)[0]
    assert (top.product_id, top.image) == (pid, 2) and top.score == pytest.approx(1.0, abs=1e-5)
    assert top.payload["image_digest"] == payload["image_sha256s"][2]


def test_search_by_id_uses_every_image_of_the_product(store, catalogue):
    store.upsert(catalogue)
    pid, vecs, _ = catalogue[7]
    hits = store.search_by_id(pid, 5)
    assert pid not in {h.product_id for h in hits}
    best = {}
    for v in vecs:
        for other, score, image in brute_force(catalogue, v, 40, exclude=pid):
            if other not in best or score > best[other][0]:
                best[other] = (score, image)
    expected = sorted(best.items(), key=lambda kv: -kv[1][0])[:5]
    assert [h.product_id for h in hits] == [k for k, _ in expected]
    np.testing.assert_allclose([h.score for h in hits], [v[0] for _, v in expected], atol=1e-5)
    # a product close to the LAST photo only is found
    twin = ("twin", vecs[-1] + 0.01, {"title": "twin", "category": "shoes"})
    store.upsert([twin])
    assert store.search_by_id(pid, 1)[0].product_id == "twin"


def test_upsert_replaces_the_image_set_and_delete_removes_every_image(store, catalogue):
    store.upsert(catalogue)
    images = store.count(images=True)
    pid, vecs, payload = catalogue[3]  # 4 images
    fewer = {**payload, "image_sha256s": payload["image_sha256s"][:2]}
    store.upsert([(pid, vecs[:2], fewer)])
    assert store.count(images=True) == images - 2
    assert store.get([pid], with_vectors=True)[0].vectors.shape == (2, DIM)
    hit = store.search(vecs[3], 40)  # the dropped photo no longer matches as itself
    assert all(not (h.product_id == pid and h.image >= 2) for h in hit)
    store.upsert([(pid, vecs[0], {"title": "one now", "image_sha256": payload["image_sha256s"][0]})])
    record = store.get([pid], with_vectors=True)[0]
    assert record.vectors.shape == (1, DIM) and "image_sha256s" not in record.payload
    assert store.count(images=True) == images - 3
    assert store.delete(["p2", "p3", "nope"]) == 2  # p2 had 3 images
    assert store.count() == 38
    assert store.count(images=True) == images - 3 - 1 - 3
    assert store.get(["p2"]) == []
    assert all(h.product_id != "p2" for h in store.search(catalogue[2][1][1], 40))


def test_scroll_sees_each_product_once_with_every_vector(store, catalogue):
    store.upsert(catalogue)
    seen, offset = [], None
    while True:
        page, offset = store.scroll(7, offset, with_vectors=True)
        seen.extend(page)
        if offset is None:
            break
    assert sorted(r.product_id for r in seen) == sorted(pid for pid, _, _ in catalogue)
    by_id = {pid: vecs for pid, vecs, _ in catalogue}
    for record in seen:
        np.testing.assert_allclose(record.vectors, by_id[record.product_id], atol=1e-5)
    assert [r.product_id for r in seen] == sorted((r.product_id for r in seen), key=lambda p: str(point_uuid(p)))


def test_bad_image_sets_are_refused(store):
    v = np.ones((2, DIM), dtype=np.float32)
    with pytest.raises(ValueError, match="2 vectors"):
        store.upsert([("x", v, {"image_sha256s": ["a" * 64]})])
    with pytest.raises(ValueError, match="NUL"):
        store.upsert([("x\x00y", v[0], {})])
    with pytest.raises(ValueError, match="vectors of"):
        store.upsert([("x", np.ones((0, DIM), dtype=np.float32), {})])
    assert store.count(images=True) == 0


def test_image_point_ids():
    assert point_uuid("sku", 0) == point_uuid("sku")
    assert len({point_uuid("sku", i) for i in range(5)}) == 5
