"""rest.py over in-memory fakes (no processes): every error goes through the one status table into the
error body, multipart uploads (one or several photos, declared fields only, content types, sizes), crop
text, the JSON shapes, and what the Guard middleware answers without the app."""
from __future__ import annotations

import threading

import grpc
import pytest
from fastapi.testclient import TestClient

from lookalike import status
from lookalike_gateway.auth import ApiKeyCheck
from lookalike_gateway.core import Dependencies
from lookalike_gateway.errors import ApiError
from lookalike_gateway.rest import create_app

from .gateway_fakes import make_gateway, png


@pytest.fixture
def gateway(tmp_path):
    return make_gateway(tmp_path, upsert_batch_size=4, max_upload_bytes=20_000)


def app_client(gateway, keys=frozenset(), draining=None) -> TestClient:
    ready = Dependencies(embedder=True, search=True, cache=False)
    return TestClient(create_app(gateway, ApiKeyCheck(keys), readiness=lambda: ready, draining=draining))


@pytest.fixture
def client(gateway):
    return app_client(gateway)


def put(client, pid: str, *photos: bytes, **fields):
    files = [("image", (f"{i}.png", photo, "image/png")) for i, photo in enumerate(photos)]
    return client.put(f"/v1/products/{pid}", files=files, data=fields)


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL])
def test_every_api_error_goes_through_the_status_table_into_the_error_body(gateway, client, code):
    def fails(product_id, deadline):
        raise ApiError(code, f"it went {code.name}")
    gateway.get_product = fails
    response = client.get("/v1/products/p1")
    assert response.status_code == status.http_status(code)
    body = response.json()["error"]
    assert body["code"] == code.name and body["message"] == f"it went {code.name}"
    retryable = code in status.RETRY_CODES
    assert ("retry-after" in response.headers) == retryable
    assert any(d.get("type") == "RetryInfo" for d in body["details"]) == retryable


def test_a_more_precise_http_status_wins_over_the_table(gateway, client):
    def too_big(product_id, deadline):
        raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big", http_status=413)
    gateway.get_product = too_big
    response = client.get("/v1/products/p1")
    assert response.status_code == 413 and "retry-after" not in response.headers


def test_several_photos_in_one_put_are_one_product_main_first(client):
    response = put(client, "shoes%2Fp1", png(1), png(2), title="Oxford", category="shoes", price="12.5",
                   attributes='{"colour": "brown"}')
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "shoes/p1", "ok": True, "outcome": "CREATED", "images": 2}
    product = client.get("/v1/products/shoes%2Fp1").json()
    assert (product["title"], product["category"], product["price"], product["attributes"]) == (
        "Oxford", "shoes", 12.5, {"colour": "brown"})
    assert [i["url"] for i in product["images"]] == ["/v1/products/shoes%2Fp1/images/0",
                                                     "/v1/products/shoes%2Fp1/images/1"]
    assert client.get("/v1/products/shoes%2Fp1/images/1").content == png(2)
    assert client.get("/v1/products/shoes%2Fp1/image").headers["content-type"] == "image/png"
    again = put(client, "shoes%2Fp1", png(1), png(2), title="Oxford", category="shoes", price="12.5",
                attributes='{"colour": "brown"}')
    assert again.json()["outcome"] == "UNCHANGED"


@pytest.mark.parametrize("fields, field", [({"attributes": "[1, 2]"}, "attributes"),
                                           ({"attributes": '{"a": 1}'}, "attributes"),
                                           ({"colour": "brown"}, "colour")])
def test_bad_metadata_or_an_undeclared_field_is_400_naming_it(client, fields, field):
    response = put(client, "p1", png(1), **fields)
    assert response.status_code == 400
    assert field in response.json()["error"]["message"]


def test_a_form_field_given_twice_is_refused(client):
    files = [("image", ("q.png", png(1), "image/png"))]
    response = client.post("/v1/search", files=files, data={"top_k": ["3", "4"]})
    assert response.status_code == 400 and "more than once" in response.json()["error"]["message"]


def test_a_declared_non_image_type_is_415_and_an_oversized_photo_413(client):
    text = client.post("/v1/search", files=[("image", ("q.txt", b"hello", "text/plain"))])
    assert text.status_code == 415 and text.json()["error"]["code"] == "INVALID_ARGUMENT"
    big = client.post("/v1/search", files=[("image", ("q.png", b"\x89PNG" + b"0" * 20_000, "image/png"))])
    assert big.status_code == 413 and big.json()["error"]["code"] == "RESOURCE_EXHAUSTED"


def test_search_answers_the_json_shape_with_the_crop_sent_to_the_embedder(gateway, client):
    assert put(client, "a%2Fb", png(1), title="A").status_code == 200
    response = client.post("/v1/search", files=[("image", ("q.png", png(1), "image/png"))],
                           data={"top_k": "1", "crop": "0.25,0.25,0.5,0.5"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert gateway.embedder.crops[-1] == "0.25,0.25,0.5,0.5"
    assert set(body) >= {"results", "cache_hit", "category_boost", "weak_match_score", "took_ms"}
    hit = body["results"][0]
    assert hit["id"] == "a/b" and hit["matched_image_url"] == "/v1/products/a%2Fb/images/0" and -1 <= hit["score"] <= 1


@pytest.mark.parametrize("crop", ["0.1,0.2", "x,y,w,h", "0.9,0.9,0.5,0.5"])
def test_a_bad_crop_is_400_naming_the_field(client, crop):
    response = client.post("/v1/search", files=[("image", ("q.png", png(1), "image/png"))], data={"crop": crop})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert any(v["field"] == "crop" for d in error["details"] for v in d.get("field_violations", []))


def test_read_only_paths_answer_405_not_a_product_named_after_them(client):
    response = client.put("/v1/products/p1/image", files=[("image", ("q.png", png(1), "image/png"))])
    assert response.status_code == 405 and response.headers["allow"] == "GET"


def test_deleting_a_missing_product_is_404(client):
    assert put(client, "p1", png(1)).status_code == 200
    assert client.delete("/v1/products/p1").json() == {"id": "p1", "deleted": True}
    gone = client.delete("/v1/products/p1")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "NOT_FOUND"


def test_the_guard_answers_without_the_app(gateway):
    keyed = app_client(gateway, keys=frozenset({"k1"}))
    assert keyed.get("/v1/products/p1").status_code == 401
    assert keyed.get("/v1/products/p1", headers={"authorization": "Bearer k1"}).status_code == 404
    assert keyed.get("/healthz").status_code == 200  # health needs no key
    draining = threading.Event()
    closing = app_client(gateway, draining=draining)
    draining.set()
    response = closing.get("/v1/products/p1")
    assert response.status_code == 503 and response.headers["connection"] == "close"
    huge = app_client(gateway).post("/v1/search", content=b"0" * 100, headers={"content-length": str(10**9),
                                                                               "content-type": "multipart/form-data"})
    assert huge.status_code == 413
