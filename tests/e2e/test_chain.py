"""End to end: real TorchServe, redis-server, search service and gateway as processes, real photos,
real gRPC over sockets and the REST proxy."""
from __future__ import annotations

import collections
import io
import re
import urllib.parse

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc, types_pb2

FAILED = lookalike_pb2.UpsertProductsResponse.OUTCOME_FAILED  # an acknowledgement of a product not stored

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def http(indexed_stack):
    with httpx.Client(base_url=indexed_stack.http_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def stub(indexed_stack):
    with grpc.insecure_channel(indexed_stack.grpc_address) as channel:
        yield lookalike_pb2_grpc.LookalikeStub(channel)


def search(http, photo, **fields):
    with open(photo, "rb") as f:
        response = http.post("/v1/search", files={"image": (photo.name, f, "image/jpeg")},
                             data={k: str(v) for k, v in fields.items()})
    return response


def metric(http, name: str, **labels) -> float:
    """Sum of a Prometheus sample from the gateway's /metrics."""
    text = http.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_healthz_and_grpc_health(indexed_stack, http):
    assert http.get("/healthz").json()["status"] == "ok"
    with grpc.insecure_channel(indexed_stack.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="lookalike.v1.Lookalike"),
                            timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        response = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]), timeout=5))
        names = {s.name for s in response.list_services_response.service}
        assert "lookalike.v1.Lookalike" in names


def test_search_returns_same_category(http, clothing_test_photos):
    hits = total = 0
    for category, photos in clothing_test_photos.items():
        for photo in photos[:2]:
            response = search(http, photo, top_k=5)
            assert response.status_code == 200, response.text
            body = response.json()
            assert len(body["results"]) == 5
            scores = [r["score"] for r in body["results"]]
            assert scores == sorted(scores, reverse=True)
            assert all(r["title"] and r["category"] for r in body["results"])
            hits += sum(r["category"] == category for r in body["results"])
            total += 5
    # Chance is 0.10 with ten categories; deep features reach ~0.56 in this 12-per-class catalogue.
    assert hits / total >= 0.45, f"P@5 {hits / total:.2f}"


def test_repeated_query_hits_cache_without_calling_embedder(indexed_stack, http, clothing_test_photos):
    photo = clothing_test_photos["shoes"][5]
    first = search(http, photo).json()
    calls_before = metric(http, "lookalike_gateway_embedder_calls_total")
    ts_before = indexed_stack.torchserve.inference_count()
    second = search(http, photo).json()
    assert second["cache_hit"] is True
    assert [r["id"] for r in second["results"]] == [r["id"] for r in first["results"]]
    assert metric(http, "lookalike_gateway_embedder_calls_total") == calls_before
    # TorchServe's own request counter proves the embedder was not called.
    assert indexed_stack.torchserve.inference_count() == ts_before


def test_new_query_is_a_cache_miss(http, clothing_test_photos):
    photo = clothing_test_photos["hat"][0]
    image = Image.open(photo).convert("RGB").rotate(3)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    response = http.post("/v1/search", files={"image": ("q.jpg", buffer.getvalue(), "image/jpeg")})
    assert response.status_code == 200
    assert response.json()["cache_hit"] is False


def test_similar_by_id_excludes_itself(http):
    product_id = _first_id("shoes")
    response = http.get(f"/v1/products/{urllib.parse.quote(product_id, safe='')}/similar", params={"top_k": 5})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 5
    assert product_id not in [r["id"] for r in results]
    assert collections.Counter(r["category"] for r in results).most_common(1)[0][0] == "shoes"


def _first_id(category: str) -> str:
    from tests.conftest import clothing_split
    photo = sorted((clothing_split("train") / category).iterdir())[0]
    return f"{category}/{photo.name}"


def test_get_product_and_image(http):
    product_id = _first_id("hat")
    quoted = urllib.parse.quote(product_id, safe="")
    body = http.get(f"/v1/products/{quoted}").json()
    assert body["id"] == product_id and body["category"] == "hat"
    assert body["title"] == product_id.split("/")[1].rsplit(".", 1)[0]
    image = http.get(body["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    Image.open(io.BytesIO(image.content)).verify()


def test_put_filter_and_delete(http, clothing_test_photos):
    photos = clothing_test_photos["pants"][:3]
    for price, photo in zip((10.0, 50.0, 90.0), photos):
        with open(photo, "rb") as f:
            response = http.put(f"/v1/products/priced-{int(price)}", files={"image": (photo.name, f, "image/jpeg")},
                                data={"title": f"Pants {price}", "category": "priced-pants", "price": str(price),
                                      "attributes": '{"colour": "blue"}'})
        assert response.status_code == 200, response.text
    got = http.get("/v1/products/priced-50").json()
    assert got["price"] == 50.0 and got["attributes"] == {"colour": "blue"}

    by_category = search(http, photos[0], category="priced-pants", top_k=10).json()["results"]
    assert sorted(r["id"] for r in by_category) == ["priced-10", "priced-50", "priced-90"]
    in_range = search(http, photos[0], category="priced-pants", min_price=20, max_price=90).json()["results"]
    assert sorted(r["id"] for r in in_range) == ["priced-50", "priced-90"]
    similar = http.get("/v1/products/priced-10/similar", params={"category": "priced-pants", "max_price": 60})
    assert [r["id"] for r in similar.json()["results"]] == ["priced-50"]

    assert http.delete("/v1/products/priced-90").status_code == 200
    assert http.get("/v1/products/priced-90").status_code == 404
    assert http.delete("/v1/products/priced-90").status_code == 404
    after = search(http, photos[0], category="priced-pants").json()["results"]
    assert sorted(r["id"] for r in after) == ["priced-10", "priced-50"]
    for product_id in ("priced-10", "priced-50"):  # the shared catalogue stays price-free for later tests
        assert http.delete(f"/v1/products/{product_id}").status_code == 200


@pytest.mark.parametrize("payload, status", [
    (b"this is not an image", 400),
    (b"", 400),
])
def test_bad_uploads_get_clear_4xx(http, payload, status):
    response = http.post("/v1/search", files={"image": ("x.jpg", payload, "image/jpeg")})
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def test_truncated_jpeg_is_rejected(http, clothing_test_photos):
    data = clothing_test_photos["dress"][0].read_bytes()
    response = http.post("/v1/search", files={"image": ("t.jpg", data[: len(data) // 2], "image/jpeg")})
    assert response.status_code == 400, response.text
    assert re.search(r"image", response.json()["error"]["message"], re.I)


def test_missing_image_field_and_bad_top_k(http, clothing_test_photos):
    assert http.post("/v1/search", data={"top_k": "5"}).status_code == 400
    photo = clothing_test_photos["dress"][1]
    for top_k in (0, -1, 1001):
        response = search(http, photo, top_k=top_k)
        assert response.status_code == 400, (top_k, response.text)
        assert "top_k" in response.json()["error"]["message"]


def test_unknown_product_is_404(http):
    assert http.get("/v1/products/no-such-product").status_code == 404
    assert http.get("/v1/products/no-such-product/similar").status_code == 404
    assert http.get("/v1/products/no-such-product/image").status_code == 404


def test_openapi_lists_the_routes(http):
    paths = http.get("/openapi.json").json()["paths"]
    for route in ("/v1/search", "/v1/products/{product_id}/similar", "/v1/products/{product_id}", "/healthz"):
        assert route in paths


def test_grpc_search_upsert_get_delete(stub, clothing_test_photos):
    photo = clothing_test_photos["skirt"][0].read_bytes()
    response = stub.SearchByImage(lookalike_pb2.SearchByImageRequest(image=photo, top_k=3), timeout=60)
    assert len(response.results) == 3 and response.results[0].score > 0

    requests = [
        lookalike_pb2.UpsertProductsRequest(product=types_pb2.Product(id="grpc-1", title="Skirt", category="g"),
                                            image=photo),
        lookalike_pb2.UpsertProductsRequest(product=types_pb2.Product(id="grpc-bad", title="Bad", category="g"),
                                            image=b"garbage"),
        lookalike_pb2.UpsertProductsRequest(product=types_pb2.Product(id="grpc-2", title="Skirt 2", category="g",
                                                                      price=12.5),
                                            image=clothing_test_photos["skirt"][1].read_bytes()),
    ]
    acks = list(stub.UpsertProducts(iter(requests), timeout=120))
    assert [(a.product_id, a.outcome != FAILED) for a in acks] == [
        ("grpc-1", True), ("grpc-bad", False), ("grpc-2", True)]
    assert "image" in acks[1].error

    got = stub.GetProduct(lookalike_pb2.GetProductRequest(product_id="grpc-2"), timeout=10).product
    assert got.title == "Skirt 2" and got.price == 12.5 and len(got.image_sha256) == 64
    similar = stub.SearchSimilar(lookalike_pb2.SearchSimilarRequest(
        product_id="grpc-1", top_k=5, filter=types_pb2.Filter(category="g")), timeout=10)
    assert [r.product.id for r in similar.results] == ["grpc-2"]

    deleted = stub.DeleteProducts(lookalike_pb2.DeleteProductsRequest(product_ids=["grpc-1", "grpc-2", "nope"]),
                                  timeout=10)
    assert deleted.deleted == 2
    with pytest.raises(grpc.RpcError) as err:
        stub.GetProduct(lookalike_pb2.GetProductRequest(product_id="grpc-1"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("request_, code", [
    (lookalike_pb2.SearchByImageRequest(image=b""), grpc.StatusCode.INVALID_ARGUMENT),
    (lookalike_pb2.SearchByImageRequest(image=b"not an image"), grpc.StatusCode.INVALID_ARGUMENT),
    (lookalike_pb2.SearchByImageRequest(image=b"x", top_k=0), grpc.StatusCode.INVALID_ARGUMENT),
    (lookalike_pb2.SearchByImageRequest(image=b"x", top_k=1001), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_grpc_bad_search_requests(stub, request_, code):
    with pytest.raises(grpc.RpcError) as err:
        stub.SearchByImage(request_, timeout=10)
    assert err.value.code() == code
    assert err.value.details()


def test_grpc_similar_unknown_id(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.SearchSimilar(lookalike_pb2.SearchSimilarRequest(product_id="missing"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
