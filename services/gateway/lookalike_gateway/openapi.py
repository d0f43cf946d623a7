"""The REST API's OpenAPI document, exact: what FastAPI derives from the routes and their typed models
(api_models), without what the gateway never sends (FastAPI's 422), optional request fields as plain
types (a form field or a query parameter is absent, never `null`), operation ids from the handlers'
names, and links between operations (PUT a product -> GET / DELETE it; a training job's Location).

The spec for reviewers is committed as `openapi.json` at the repository root; `python
scripts/gen_openapi.py` regenerates it from `rest.offline_spec()` (default settings, no dependencies
running) and `--check` fails when it is stale. tests/unit/test_gateway_openapi.py checks the same, and
tests/e2e/test_contract.py that a live gateway serves it."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .api_models import IMAGE_CONTENT_TYPES

COMMITTED = Path(__file__).resolve().parents[3] / "openapi.json"
HIDDEN_SCHEMAS = ("HTTPValidationError", "ValidationError")
LINKS = {
    ("/v1/products/{product_id}", "put"): {"200": {
        "GetProduct": {"operationId": "get_product", "parameters": {"product_id": "$request.path.product_id"}},
        "DeleteProduct": {"operationId": "delete_product", "parameters": {"product_id": "$request.path.product_id"}},
        "SimilarProducts": {"operationId": "similar", "parameters": {"product_id": "$request.path.product_id"}},
        "ProductImage": {"operationId": "product_image", "parameters": {"product_id": "$request.path.product_id"}},
    }},
    ("/v1/classifiers", "post"): {"202": {
        "TrainingJob": {"operationId": "training_job", "parameters": {"job_id": "$response.body#/id"}},
    }},
}


def _plain_optional(schema: dict) -> dict:
    """`anyOf: [X, {"type": "null"}]` -> X (keeping title, description, default)."""
    options = schema.get("anyOf")
    if not options or len(options) != 2 or {"type": "null"} not in options:
        return schema
    (kept,) = [o for o in options if o != {"type": "null"}]
    out = {k: v for k, v in schema.items() if k != "anyOf"}
    out.update(kept)
    if out.get("default", 0) is None:
        del out["default"]
    return out


def refine(spec: dict) -> dict:
    """FastAPI's document made exact (see the module docstring); returns a new dict."""
    spec = copy.deepcopy(spec)
    schemas = spec.get("components", {}).get("schemas", {})
    for name in HIDDEN_SCHEMAS:
        schemas.pop(name, None)
    form_bodies = set()
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            operation.get("responses", {}).pop("422", None)
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _plain_optional(parameter["schema"])
            content = operation.get("requestBody", {}).get("content", {})
            for media, body in content.items():
                ref = body.get("schema", {}).get("$ref", "")
                if media in ("multipart/form-data", "application/x-www-form-urlencoded") and ref:
                    form_bodies.add(ref.rsplit("/", 1)[-1])
            for status, links in LINKS.get((path, method), {}).items():
                operation["responses"][status]["links"] = links
    for name in form_bodies:
        properties = schemas[name].get("properties", {})
        for field, schema in properties.items():
            properties[field] = _plain_optional(schema)
            if properties[field].get("contentMediaType") == "application/octet-stream":
                properties[field]["format"] = "binary"  # a file part, to generators that read OpenAPI 3.0's form
        schemas[name]["additionalProperties"] = False  # http_errors.DECLARED_FORM_FIELDS_ONLY
    for item in spec.get("paths", {}).values():
        for operation in item.values():
            body = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if body and "image" in schemas[body["schema"]["$ref"].rsplit("/", 1)[-1]].get("properties", {}):
                body["encoding"] = {"image": {"contentType": IMAGE_CONTENT_TYPES}}
    return spec


def install(app: FastAPI) -> None:
    """Serves the refined document at /openapi.json (built once)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = refine(get_openapi(title=app.title, version=app.version,
                                                    description=app.description, routes=app.routes,
                                                    tags=app.openapi_tags))
        return app.openapi_schema

    app.openapi = openapi


def dumps(spec: dict) -> str:
    return json.dumps(spec, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
