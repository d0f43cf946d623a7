"""Products with several images in the gateway (ingest, search, images, reindex source), crop and min_score,
over in-memory fakes."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from lookalike.crop import CropBox, parse_crop
from lookalike.v1 import types_pb2
from lookalike_gateway.errors import ApiError, Deadline
from lookalike_gateway.ingest_types import CREATED, FAILED, SKIPPED, UNCHANGED, UPDATED, IngestItem

from .gateway_fakes import DictCache, ingest, make_gateway, png, product

COLLECTION = "products__lookalike-lite0"


def item(pid: str, *seeds: int, **kw) -> IngestItem:
    return IngestItem(product(pid), png(seeds[0]), more_images=[png(s) for s in seeds[1:]], **kw)


@pytest.fixture
def gateway(tmp_path):
    return make_gateway(tmp_path, upsert_batch_size=4)


def stored(gateway, pid):
    return gateway.search.stub.collections[COLLECTION][pid]


def test_a_product_with_several_images_is_stored_once_with_every_image(gateway):
    result = ingest(gateway, [item("multi", 1, 2, 3)])[0]
    assert (result.outcome, result.images) == (CREATED, 3)
    point = stored(gateway, "multi")
    assert len(point.product.image_sha256s) == 3 and len(point.more_vectors) == 2
    assert point.product.image_sha256 == point.product.image_sha256s[0]
    assert all(gateway.image_store.exists(h) for h in point.product.image_sha256s)
    assert gateway.embedder.calls == 3
    got = gateway.get_product("multi", Deadline(5))
    assert list(got.image_sha256s) == list(point.product.image_sha256s)
    assert gateway.image_of("multi", Deadline(5), 2) == png(3)
    assert gateway.image_of("multi", Deadline(5)) == png(1)
    with pytest.raises(ApiError) as err:
        gateway.image_of("multi", Deadline(5), 3)
    assert err.value.code == grpc.StatusCode.NOT_FOUND and "0..2" in err.value.message


def test_rerun_changes_and_image_set_replacement_work_per_image(gateway):
    ingest(gateway, [item("m", 1, 2, 3)])
    assert ingest(gateway, [item("m", 1, 2, 3)])[0].outcome == UNCHANGED
    assert gateway.embedder.calls == 3
    reordered = ingest(gateway, [item("m", 3, 1, 2)])[0]  # another main image: same vectors, no embedding
    assert reordered.outcome == UPDATED and gateway.embedder.calls == 3
    assert stored(gateway, "m").product.image_sha256s[0] == stored(gateway, "m").product.image_sha256s[0]
    added = ingest(gateway, [item("m", 3, 1, 2, 4)])[0]  # one new photo: only it is embedded
    assert (added.outcome, added.images) == (UPDATED, 4) and gateway.embedder.calls == 4
    fewer = ingest(gateway, [item("m", 4)])[0]
    assert (fewer.outcome, fewer.images) == (UPDATED, 1) and gateway.embedder.calls == 4
    point = stored(gateway, "m")
    assert len(point.product.image_sha256s) == 1 and not point.more_vectors
    meta = IngestItem(product("m", category="new"), png(4))
    assert ingest(gateway, [meta])[0].outcome == UPDATED and gateway.embedder.calls == 4


def test_one_bad_image_fails_its_product_alone(gateway):
    bad = IngestItem(product("bad"), png(1), more_images=[png(2), b"not an image"])
    empty = IngestItem(product("empty"), png(5), more_images=[b""])
    results = ingest(gateway, [bad, item("good", 3, 4), empty])
    assert [r.outcome for r in results] == [FAILED, CREATED, FAILED]
    assert results[0].error.message.startswith("image 2: invalid image")
    assert results[2].error.message == "image 1: image is empty"
    assert "bad" not in gateway.search.stub.collections[COLLECTION]


def test_too_many_images_or_bytes_are_refused(tmp_path):
    gateway = make_gateway(tmp_path, max_images_per_product=2, max_product_bytes=4096)
    too_many = ingest(gateway, [item("many", 1, 2, 3)])[0]
    assert too_many.outcome == FAILED and "at most 2 per product" in too_many.error.message
    big = IngestItem(product("big"), png(1, size=40), more_images=[png(2, size=40)])
    assert len(big.image) + len(big.more_images[0]) > 4096
    too_big = ingest(gateway, [big])[0]
    assert too_big.outcome == FAILED and too_big.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_duplicates_are_checked_per_image(gateway):
    ingest(gateway, [item("a", 1)])
    report = ingest(gateway, [item("b", 7, 1)])[0]  # b's second photo is a's photo
    assert (report.outcome, report.duplicate_of, report.exact_duplicate, report.duplicate_image) == (
        CREATED, "a", True, 1)
    skipped = ingest(gateway, [item("c", 8, 9, 1, skip_duplicates=True)])[0]
    assert (skipped.outcome, skipped.duplicate_image) == (SKIPPED, 2) and skipped.duplicate_of in ("a", "b")
    # a product's own photos never duplicate each other; within one stream, an earlier product counts
    results = ingest(gateway, [item("d", 10, 10), item("e", 11, 10, skip_duplicates=True)])
    assert results[0].outcome == CREATED and not results[0].duplicate_of
    assert (results[1].outcome, results[1].duplicate_of) == (SKIPPED, "d")


def test_search_answers_products_once_with_the_matched_image(gateway):
    ingest(gateway, [item("m", 1, 2, 3), item("s", 4)])
    found = gateway.search_by_image(png(3), 5, types_pb2.Filter(), Deadline(5), 0.0)
    assert [r.product.id for r in found.results] == ["m", "s"]
    top = found.results[0]
    assert top.matched_image == 2 and top.score == pytest.approx(1.0, abs=1e-5)
    assert top.matched_image_sha256 == stored(gateway, "m").product.image_sha256s[2]


def test_min_score_drops_weaker_results_and_bad_values_are_refused(gateway):
    ingest(gateway, [item("m", 1, 2), item("s", 4)])
    everything = gateway.search_by_image(png(2), 5, types_pb2.Filter(), Deadline(5), 0.0)
    assert len(everything.results) == 2
    cut = everything.results[0].score - 1e-3
    kept = gateway.search_by_image(png(2), 5, types_pb2.Filter(), Deadline(5), 0.0, min_score=cut)
    assert [r.product.id for r in kept.results] == ["m"]
    assert all(r.score >= cut for r in kept.results)
    for bad in (1.5, -2.0, float("nan")):
        with pytest.raises(ApiError) as err:
            gateway.search_by_image(png(2), 5, types_pb2.Filter(), Deadline(5), 0.0, min_score=bad)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "min_score" in err.value.message


def test_crop_is_sent_to_the_embedder_and_keys_the_cache(tmp_path):
    gateway = make_gateway(tmp_path, cache=DictCache(), upsert_batch_size=4)
    ingest(gateway, [item("m", 1)])
    whole = gateway.search_by_image(png(1), 5, types_pb2.Filter(), Deadline(5), 0.0)
    region = gateway.search_by_image(png(1), 5, types_pb2.Filter(), Deadline(5), 0.0,
                                     crop=types_pb2.CropBox(x=0.25, y=0.25, width=0.5, height=0.5))
    assert whole.cache_hit  # the ingest cached the whole photo's embedding
    assert gateway.embedder.crops == ["0.25,0.25,0.5,0.5"]
    assert not region.cache_hit and region.results[0].score < whole.results[0].score
    again = gateway.search_by_image(png(1), 5, types_pb2.Filter(), Deadline(5), 0.0, crop="0.25,0.25,0.5,0.5")
    assert again.cache_hit and again.results[0].score == region.results[0].score
    assert gateway.search_by_image(png(1), 5, types_pb2.Filter(), Deadline(5), 0.0).cache_hit


@pytest.mark.parametrize("crop, message", [
    (types_pb2.CropBox(x=0.1, y=0.1, width=0, height=0.5), "zero"),
    (types_pb2.CropBox(x=0.6, y=0.0, width=0.5, height=0.5), "outside"),
    (types_pb2.CropBox(x=0.0, y=0.7, width=0.2, height=0.4), "outside"),
    (types_pb2.CropBox(x=-0.1, y=0.0, width=0.2, height=0.4), "outside"),
    ("0.1,0.1,0.5", "four numbers"),
    ("a,b,c,d", "four numbers"),
    ("0,0,nan,1", "finite"),
])
def test_bad_crops_are_invalid_argument(gateway, crop, message):
    with pytest.raises(ApiError) as err:
        gateway.search_by_image(png(1), 5, types_pb2.Filter(), Deadline(5), 0.0, crop=crop)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.message
    assert gateway.embedder.calls == 0


def test_crop_boxes():
    box = parse_crop(" 0.1, 0.2 ,0.3,0.4 ")
    assert box == CropBox(0.1, 0.2, 0.3, 0.4) and box.key == "0.1,0.2,0.3,0.4"
    assert parse_crop("") is None and parse_crop(None) is None
    assert CropBox(0.5, 0.5, 0.5, 0.5).pixels(101, 51) == (50, 25, 101, 51)
    assert CropBox(0.0, 0.0, 1e-9, 1e-9).pixels(10, 10) == (0, 0, 1, 1)  # at least a pixel
    edge = parse_crop("0.5,0.5,0.5000001,0.5")  # float32 rounding past the edge is the edge
    assert edge.x + edge.width <= 1


def test_reindex_source_carries_every_image(gateway):
    ingest(gateway, [item("m", 1, 2, 3), item("s", 4)])
    missing: dict = {}
    source = gateway.collections.active()
    items = {i.product.id: i for i in gateway.reindexer._source_items(source, missing)}
    assert not missing
    assert items["m"].images == [png(1), png(2), png(3)] and items["s"].images == [png(4)]
    assert not items["m"].product.image_sha256s


def test_stored_vectors_are_reused_only_when_they_line_up(gateway):
    from lookalike_gateway.ingest_pipeline import _stored_vectors

    ingest(gateway, [item("m", 1, 2)])
    point = stored(gateway, "m")
    assert set(_stored_vectors(point)) == set(point.product.image_sha256s)
    point.more_vectors.pop()  # an image lost mid-upsert: nothing is reused
    assert _stored_vectors(point) == {}
    assert np.allclose(np.linalg.norm(gateway.embedder.vector(png(1))), 1.0)


@pytest.fixture
def http(gateway):
    from fastapi.testclient import TestClient

    from lookalike_gateway.auth import ApiKeyCheck
    from lookalike_gateway.core import Dependencies
    from lookalike_gateway.rest import create_app

    with TestClient(create_app(gateway, ApiKeyCheck(frozenset()), lambda: Dependencies(True, True, True))) as client:
        yield client


def photos(*seeds):
    return [("image", (f"{s}.png", png(s), "image/png")) for s in seeds]


def test_rest_products_with_several_images(http):
    put = http.put("/v1/products/sku%2F1", files=photos(1, 2, 3), data={"title": "Boot", "category": "shoes"})
    assert put.status_code == 200 and put.json() == {"id": "sku/1", "ok": True, "outcome": "CREATED", "images": 3}
    got = http.get("/v1/products/sku%2F1").json()
    assert [i["index"] for i in got["images"]] == [0, 1, 2]
    assert got["images"][2]["url"] == "/v1/products/sku%2F1/images/2"
    assert http.get(got["images"][2]["url"]).content == png(3)
    assert http.get("/v1/products/sku%2F1/image").content == png(1)
    missing = http.get("/v1/products/sku%2F1/images/3")
    assert missing.status_code == 404 and "has no image 3" in missing.json()["error"]["message"]
    found = http.post("/v1/search", files=photos(2)[:1], data={"category_boost": "0"}).json()
    assert found["results"][0]["matched_image"] == 1
    assert found["results"][0]["matched_image_url"] == "/v1/products/sku%2F1/images/1"
    assert found["weak_match_score"] == 0.0
    again = http.put("/v1/products/sku%2F1", files=photos(3), data={"title": "Boot", "category": "shoes"})
    assert again.json()["outcome"] == "UPDATED" and len(http.get("/v1/products/sku%2F1").json()["images"]) == 1
    bad = http.put("/v1/products/x", files=photos(1) + [("image", ("b.png", b"junk", "image/png"))])
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("image 1: invalid image")
    assert http.delete("/v1/products/sku%2F1").json()["deleted"] is True
    assert http.get("/v1/products/sku%2F1/images/0").status_code == 404


def test_rest_crop_and_min_score(http, gateway):
    http.put("/v1/products/a", files=photos(1))
    http.put("/v1/products/b", files=photos(2))
    plain = http.post("/v1/search", files=photos(1), data={"category_boost": "0"}).json()["results"]
    assert len(plain) == 2
    cut = http.post("/v1/search", files=photos(1), data={"min_score": str(plain[0]["score"] - 1e-3)}).json()
    assert [r["id"] for r in cut["results"]] == ["a"]
    cropped = http.post("/v1/search", files=photos(1), data={"crop": "0,0,0.5,0.5"})
    assert cropped.status_code == 200 and gateway.embedder.crops[-1] == "0,0,0.5,0.5"
    for crop in ("0,0,0,0.5", "0.6,0,0.5,0.5", "1,2,3", "x,0,1,1"):
        bad = http.post("/v1/search", files=photos(1), data={"crop": crop})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_ARGUMENT", crop
    assert http.post("/v1/search", files=photos(1), data={"min_score": "2"}).status_code == 400
    assert http.get("/v1/products/a/similar", params={"min_score": "-3"}).status_code == 400
