"""The REST contract without a stack: the committed openapi.json is what the gateway serves, the spec is
exact (typed answers, every error status with the error schema, no 422, limits from lookalike.limits),
and what the app does before any dependency is called matches it (405 + Allow, 404, 400 with field
violations, unknown or repeated form fields)."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from lookalike import limits
from lookalike_gateway import openapi, rest
from lookalike_gateway.api_models import V1_ERRORS


@pytest.fixture(scope="module")
def spec():
    return rest.offline_spec()


@pytest.fixture(scope="module")
def client():
    from types import SimpleNamespace

    from lookalike_gateway.auth import ApiKeyCheck
    from lookalike_gateway.rest import create_app
    from lookalike_gateway.settings import GatewaySettings

    settings = GatewaySettings.model_construct()
    gateway = SimpleNamespace(settings=settings, classifier=SimpleNamespace(settings=settings))
    with TestClient(create_app(gateway, ApiKeyCheck(frozenset()), readiness=lambda: None)) as test_client:
        yield test_client


def test_committed_spec_is_current(spec):
    assert openapi.COMMITTED.read_text() == openapi.dumps(spec), "run: python scripts/gen_openapi.py"


def test_every_operation_is_typed_and_documents_its_errors(spec):
    operations = [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]
    assert len(operations) >= 13
    for path, method, operation in operations:
        responses = operation["responses"]
        assert "422" not in responses, (method, path)
        ok = next(code for code in responses if code.startswith("2"))
        content = responses[ok].get("content", {})
        schemas = [media.get("schema", {}) for media in content.values()]
        assert schemas and all(schemas), f"{method} {path}: untyped {ok} answer"
        if path.startswith("/v1/"):
            for code in V1_ERRORS:
                assert str(code) in responses, (method, path, code)
            for code, response in responses.items():
                if code.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (method, path, code)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    error = spec["components"]["schemas"]["ErrorInfo"]
    assert {"code", "message", "details"} <= set(error["properties"])


def test_limits_and_required_fields_come_from_one_place(spec):
    schemas = spec["components"]["schemas"]
    for body in ("Body_search", "Body_classify", "Body_put_product"):
        assert "image" in schemas[body]["required"] and schemas[body]["additionalProperties"] is False
    top_k = schemas["Body_search"]["properties"]["top_k"]
    assert (top_k["minimum"], top_k["maximum"], top_k["type"]) == (1, limits.MAX_TOP_K, "integer")
    product_id = spec["paths"]["/v1/products/{product_id}"]["get"]["parameters"][0]["schema"]
    assert product_id["maxLength"] == limits.MAX_ID_LENGTH
    assert str(limits.DEFAULT_MAX_UPLOAD_BYTES) in schemas["Body_search"]["properties"]["image"]["description"]
    search = spec["paths"]["/v1/search"]["post"]
    assert "image/jpeg" in search["requestBody"]["content"]["multipart/form-data"]["encoding"]["image"]["contentType"]
    assert schemas["Body_put_product"]["properties"]["attributes"]["type"] == "object"
    train = spec["paths"]["/v1/classifiers"]["post"]
    assert "Location" in train["responses"]["202"]["headers"] and "409" in train["responses"]
    assert train["responses"]["202"]["links"]["TrainingJob"]["operationId"] == "training_job"


def test_search_service_and_gateway_share_the_limits():
    import lookalike_gateway.validation as gateway_validation
    import lookalike_search.servicer as search_servicer

    assert gateway_validation.MAX_ID_LENGTH == search_servicer.MAX_ID_LENGTH == limits.MAX_ID_LENGTH
    assert gateway_validation.MAX_TOP_K == search_servicer.MAX_TOP_K == limits.MAX_TOP_K


def test_405_names_the_methods_of_the_path(client):
    response = client.patch("/v1/products/abc")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"DELETE", "GET", "PUT"}
    assert response.json()["error"]["code"] == "UNIMPLEMENTED"
    image = client.put("/v1/products/abc/image")  # not a PUT of a product "abc/image"
    assert image.status_code == 405 and image.headers["allow"] == "GET"
    assert client.delete("/v1/search").headers["allow"] == "POST"


def test_errors_before_any_dependency_have_the_error_body(client):
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
    no_image = client.post("/v1/search", data={"top_k": "5"})
    body = no_image.json()["error"]
    assert no_image.status_code == 400 and body["code"] == "INVALID_ARGUMENT"
    assert body["details"] == [{"type": "BadRequest",
                                "field_violations": [{"field": "image", "description": "Field required"}]}]
    files = {"image": ("a.jpg", b"x", "image/jpeg")}
    too_many = client.post("/v1/search", files=files, data={"top_k": str(limits.MAX_TOP_K + 1)})
    assert too_many.status_code == 400 and too_many.json()["error"]["details"][0]["field_violations"][0]["field"] \
        == "top_k"
    unknown = client.post("/v1/search", files=files, data={"topk": "5"})
    assert unknown.status_code == 400 and "'topk'" in unknown.json()["error"]["message"]
    twice = client.post("/v1/search", files=[("image", ("a.jpg", b"x", "image/jpeg")), ("top_k", (None, "1")),
                                             ("top_k", (None, "2"))])
    assert twice.status_code == 400 and "more than once" in twice.json()["error"]["message"]
    not_image = client.post("/v1/search", files={"image": ("a.txt", b"hello", "text/plain")})
    assert not_image.status_code == 415 and not_image.json()["error"]["details"][0]["type"] == "BadRequest"
    bad_training = client.post("/v1/classifiers", json={"holdout_fraction": False})
    assert bad_training.status_code == 400
    assert client.post("/v1/classifiers", json={"label_field": "nope"}).json()["error"]["message"].count("nope")
    long_id = client.get("/v1/products/" + "x" * (limits.MAX_ID_LENGTH + 1))
    assert long_id.status_code == 400 and json.dumps(long_id.json()).count("product_id")
