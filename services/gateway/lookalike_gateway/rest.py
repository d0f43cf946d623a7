"""The REST proxy (FastAPI): the same semantics as the gRPC API, plus /healthz, /metrics and the web UI."""
# no `from __future__ import annotations`: the route signatures use Annotated metadata built at run time

import json
import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated
from urllib.parse import quote

import grpc
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookalike import api_keys, images, limits, request_id, stack_status
from lookalike.filters import make_filter
from lookalike.v1 import types_pb2

from . import adaptation_api, classifier_api, http_errors, metrics, openapi
from . import api_models as m
from .auth import ApiKeyCheck, bearer_token
from .core import Gateway
from .errors import SHUTTING_DOWN, ApiError, Deadline, bad_argument, not_found
from .http_errors import api_error_response, error_response
from .ingest_types import IngestItem, image_hashes, outcome_name
from .settings import GatewaySettings

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
# The web page: everything from this origin (no CDN), blob: for the shopper's own photo, never framed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def image_url(product_id: str, index: int = 0) -> str:
    return f"/v1/products/{quote(product_id, safe='')}/images/{index}"


def product_json(product: types_pb2.Product, with_images: bool = True) -> dict:
    """`with_images`: list every photo (GetProduct); a search hit does not know them all."""
    body = {
        "id": product.id,
        "title": product.title,
        "category": product.category,
        "price": product.price if product.HasField("price") else None,
        "attributes": dict(product.attributes),
        "image_url": f"/v1/products/{quote(product.id, safe='')}/image" if product.image_sha256 else None,
    }
    if with_images:
        hashes = image_hashes(product)
        body["images"] = [{"index": i, "sha256": h, "url": image_url(product.id, i)} for i, h in enumerate(hashes)]
    return body


def result_json(result: types_pb2.SearchResult) -> dict:
    return {**product_json(result.product, with_images=False), "score": round(float(result.score), 6),
            "matched_image": result.matched_image,
            "matched_image_url": image_url(result.product.id, result.matched_image)}


class Guard:
    """Pure ASGI middleware around every HTTP request: request id, upload-size refusal, draining, API keys
    (on /v1/ and /metrics), metrics and the access log. (Starlette's @app.middleware("http") did the same
    for ~1.5 ms more per request: it runs the app in a task group behind memory streams.)"""

    def __init__(self, app, settings, auth: ApiKeyCheck, draining: threading.Event | None = None):
        self.app = app
        self.settings = settings
        self.auth = auth
        self.draining = draining

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        headers = Headers(scope=scope)
        rid = request_id.accept(headers.get(request_id.HTTP_HEADER))
        route, method = scope["path"], scope["method"]
        status = [500]  # what an exception that escapes the app becomes

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                MutableHeaders(scope=message)[request_id.HTTP_HEADER] = rid
            await send(message)

        try:
            refusal = self.refusal(scope, headers, route, method)
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            route_obj = scope.get("route")
            label = getattr(route_obj, "path", None) or ("static" if route.startswith("/static") else "other")
            metrics.REQUESTS.labels(api="rest", method=f"{method} {label}", status=str(status[0])).inc()
            elapsed = time.perf_counter() - started
            metrics.LATENCY.labels(api="rest", method=f"{method} {label}").observe(elapsed)
            if self.settings.access_log and route.startswith("/v1/"):
                log.info("%s %s %d %.1fms", method, label, status[0], elapsed * 1000)

    def refusal(self, scope, headers: Headers, route: str, method: str) -> Response | None:
        """The response that answers the request without the app, or None to let it through."""
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            length = 0
        # Multipart framing adds a little; anything far above the image limit (a product's photos: PUT) is
        # refused unread.
        limit = self.settings.max_product_bytes if method == "PUT" else self.settings.max_upload_bytes
        if length > limit + limits.MULTIPART_SLACK_BYTES:
            return error_response(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"request body of {length} bytes is above the limit of {limit} bytes", http=413)
        if route.startswith("/v1/") and self.draining is not None and self.draining.is_set():
            response = error_response(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            response.headers["Connection"] = "close"
            return response
        if (route.startswith("/v1/") or route == "/metrics") and method != "OPTIONS":
            # with API keys configured, the metrics need one too (they describe the traffic); CORS
            # preflights carry none. Prometheus sends a key as `authorization: Bearer` or `?api_key=`.
            presented = (headers.get(api_keys.HTTP_HEADER) or bearer_token(headers.get("authorization"))
                         or QueryParams(scope.get("query_string", b"")).get("api_key"))
            client = scope.get("client")
            try:
                self.auth.check(presented, caller=client[0] if client else "")
            except ApiError as exc:
                return api_error_response(exc)
        return None


def create_app(gateway: Gateway, auth: ApiKeyCheck, readiness, draining: threading.Event | None = None) -> FastAPI:
    """The REST app. `readiness()` returns the latest Dependencies snapshot (for /healthz); once
    `draining` is set, new API requests get 503 (the server is shutting down)."""
    settings = gateway.settings
    app = FastAPI(title="Lookalike", version="1", description="Visual product search: find products that look alike.",
                  generate_unique_id_function=lambda route: route.name)
    if settings.cors_origin_list:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin_list, allow_methods=["*"],
                           allow_headers=["*"])

    def deadline() -> Deadline:
        return Deadline(settings.request_timeout_s)

    app.add_middleware(Guard, settings=settings, auth=auth, draining=draining)
    http_errors.install(app)

    async def read_image(upload: UploadFile) -> bytes:
        return await http_errors.read_image(upload, settings.max_upload_bytes)

    image_doc = (f"the photo (JPEG, PNG, WebP, GIF, BMP; at most {settings.max_upload_bytes} bytes and "
                 f"{settings.max_image_pixels} pixels)")
    ProductId = Annotated[str, PathParam(min_length=1, max_length=limits.MAX_ID_LENGTH,
                                         # documented, checked by validation.validate_product_id (pydantic's regex
                                         # engine has no look-ahead)
                                         json_schema_extra={"pattern": m.PRODUCT_ID_PATTERN},
                                         description="the product id (URL-encoded: `/` as `%2F`)",
                                         examples=["shoes/oxford-123.jpg"])]
    TopK = Annotated[int | None, Query(ge=1, le=limits.MAX_TOP_K,
                                       description=f"results (default {settings.default_top_k})")]
    Price = Annotated[float | None, Query(allow_inf_nan=False)]
    MinScore = Annotated[float | None, Form(ge=-1, le=1, allow_inf_nan=False, description=m.MIN_SCORE_DOC)]

    @app.get("/healthz", tags=["ops"], response_model=m.Health,
             responses={503: {"model": m.Health, "description": "not ready: a dependency is down"}})
    def healthz():
        """Readiness: 200 only when the embedder and the search service are ready (the cache is optional)."""
        deps = readiness()
        body = {"status": "ok" if deps.ready else "unavailable",
                "embedder": deps.embedder, "search": deps.search, "cache": deps.cache}
        stack = stack_status.health_detail(settings.stack_status_file)  # lookalike serve's children
        if stack is not None:
            body["stack"] = stack
        return JSONResponse(body, status_code=200 if deps.ready else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format"},
                        401: {"model": m.ErrorBody, "description": m.ERROR_DESCRIPTIONS[401]}})
    def prometheus_metrics():
        """Prometheus metrics (with API keys configured: a key, as `authorization: Bearer` or `?api_key=`)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/search", tags=["search"], response_model=m.SearchResponse,
              responses=m.errors(400, 413, 415, 504), dependencies=[http_errors.DECLARED_FORM_FIELDS_ONLY])
    async def search(image: Annotated[UploadFile, File(description=image_doc)],
                     top_k: Annotated[int | None, Form(ge=1, le=limits.MAX_TOP_K,
                                                       description=f"results (default {settings.default_top_k})")] = None,
                     category: Annotated[str | None, Form(description="only this category")] = None,
                     min_price: Annotated[float | None, Form(allow_inf_nan=False,
                                                             description="at most max_price")] = None,
                     max_price: Annotated[float | None, Form(allow_inf_nan=False)] = None,
                     category_boost: Annotated[float | None, Form(
                         ge=0, le=limits.MAX_CATEGORY_BOOST,
                         description=f"weight of P(category | photo) in the order (default {settings.category_boost:g}; "
                                     "0 = plain similarity)")] = None,
                     crop: Annotated[str | None, Form(pattern=m.CROP_PATTERN, description=m.CROP_DOC,
                                                      examples=["0.25,0.1,0.5,0.6"])] = None,
                     min_score: MinScore = None):
        """Products that look like the uploaded photo (multipart field `image`), or a region of it (`crop`),
        each once at its best-matching photo (`matched_image`). With a category classifier trained, results
        are ordered by score + category_boost * P(category | photo) (default 0.2; 0 = plain similarity
        order). `weak_match_score`: below it even the best result is usually not the same kind of product."""
        data = await read_image(image)
        started = time.perf_counter()
        found = await run_in_threadpool(
            lambda: gateway.search_by_image(data, top_k, make_filter(category, min_price, max_price), deadline(),
                                            category_boost, crop=crop, min_score=min_score))
        return {"results": [result_json(r) for r in found.results], "cache_hit": found.cache_hit,
                "category_boost": found.category_boost, "weak_match_score": found.weak_match_score,
                "took_ms": round((time.perf_counter() - started) * 1000, 2)}

    @app.get("/v1/products/{product_id:path}/similar", tags=["search"], response_model=m.SimilarResponse,
             responses=m.errors(400, 404, 504))
    def similar(product_id: ProductId, top_k: TopK = None, category: str | None = None,
                min_price: Price = None, max_price: Price = None,
                min_score: Annotated[float | None, Query(ge=-1, le=1, allow_inf_nan=False,
                                                         description=m.MIN_SCORE_DOC)] = None):
        """"More like this": products that look like an indexed product (by any of its photos)."""
        results = gateway.search_similar(product_id, top_k, make_filter(category, min_price, max_price), deadline(),
                                         min_score=min_score)
        return {"results": [result_json(r) for r in results]}

    def image_response(data: bytes) -> Response:
        fmt = images.sniff_format(data) or "octet-stream"
        media = "application/octet-stream" if fmt == "octet-stream" else f"image/{fmt.lower()}"
        return Response(data, media_type=media, headers={"Cache-Control": "public, max-age=86400",
                                                         "X-Content-Type-Options": "nosniff"})

    image_answer = {200: {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
                          "description": "the stored original photo"}, **m.errors(400, 404, 504)}

    @app.get("/v1/products/{product_id:path}/image", tags=["products"], response_class=Response,
             responses=image_answer)
    def product_image(product_id: ProductId):
        """The product's stored original main photo."""
        return image_response(gateway.image_of(product_id, deadline()))

    @app.get("/v1/products/{product_id:path}/images/{index}", tags=["products"], response_class=Response,
             responses=image_answer)
    def product_image_n(product_id: ProductId,
                        index: Annotated[int, PathParam(ge=0, le=limits.MAX_IMAGES_PER_PRODUCT - 1,
                                                        description="0 = the main photo")]):
        """The product's stored original photo `index` (404 past its last photo)."""
        return image_response(gateway.image_of(product_id, deadline(), index))

    @app.api_route("/v1/products/{product_id:path}/images/{index}", methods=["PUT", "POST", "DELETE", "PATCH"],
                   name=http_errors.METHOD_NOT_ALLOWED, include_in_schema=False)
    @app.api_route("/v1/products/{product_id:path}/image", methods=["PUT", "POST", "DELETE", "PATCH"],
                   name=http_errors.METHOD_NOT_ALLOWED, include_in_schema=False)
    @app.api_route("/v1/products/{product_id:path}/similar", methods=["PUT", "POST", "DELETE", "PATCH"],
                   name=http_errors.METHOD_NOT_ALLOWED, include_in_schema=False)
    def method_not_allowed():
        """.../image and .../similar are read-only (without this, PUT /v1/products/x/image would index a
        product "x/image")."""
        raise StarletteHTTPException(405)

    @app.put("/v1/products/{product_id:path}", tags=["products"], response_model=m.PutProductResponse,
             responses=m.errors(400, 413, 415, 504),
             dependencies=[http_errors.declared_form_fields_only(frozenset({"image"}))])
    async def put_product(request: Request, product_id: ProductId, image: Annotated[UploadFile, File(description=(
                              f"{image_doc}. Repeat the part for several photos of the product (at most "
                              f"{settings.max_images_per_product}, together at most {settings.max_product_bytes} "
                              "bytes), the main one first: they replace the product's stored photos"))],
                          title: Annotated[str, Form()] = "", category: Annotated[str, Form()] = "",
                          price: Annotated[float | None, Form(allow_inf_nan=False)] = None,
                          attributes: Annotated[str, Form(
                              description="a JSON object of strings, e.g. {\"colour\": \"brown\"}",
                              # a JSON-encoded part: OpenAPI's multipart form of an object property
                              json_schema_extra={"type": "object", "additionalProperties": {"type": "string"}})]
                          = "{}"):
        """Indexes (or updates) one product: multipart `image` (one or several photos) plus metadata fields;
        answers once it is stored durably."""
        try:
            attrs = json.loads(attributes or "{}")
            if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values()):
                raise ValueError
        except ValueError:
            raise bad_argument("attributes", "attributes must be a JSON object of strings") from None
        product = types_pb2.Product(id=product_id, title=title, category=category,
                                    attributes={str(k): str(v) for k, v in attrs.items()})
        if price is not None:
            product.price = price
        parts = (await request.form()).getlist("image")  # every photo: `image` is the first
        if not all(isinstance(part, StarletteUploadFile) for part in parts):
            raise bad_argument("image", "every image part must be a file (a part with a filename)")
        photos = [await read_image(upload) for upload in parts]
        outcome = await run_in_threadpool(
            lambda: list(gateway.ingest([IngestItem(product, photos[0], more_images=photos[1:])], deadline)))
        if outcome[0].error is not None:
            raise outcome[0].error
        return {"id": product_id, "ok": True, "outcome": outcome_name(outcome[0].outcome), "images": len(photos)}

    @app.get("/v1/products/{product_id:path}", tags=["products"], response_model=m.Product,
             responses=m.errors(400, 404, 504))
    def get_product(product_id: ProductId):
        """One product's metadata."""
        return product_json(gateway.get_product(product_id, deadline()))

    @app.delete("/v1/products/{product_id:path}", tags=["products"], response_model=m.DeleteProductResponse,
                responses=m.errors(400, 404, 504))
    def delete_product(product_id: ProductId):
        """Removes one product (404 when it is not stored)."""
        if gateway.delete_products([product_id], deadline()) == 0:
            raise not_found("product", product_id)
        return {"id": product_id, "deleted": True}

    @app.get("/v1/collections", tags=["operations"], response_model=m.Collections, responses=m.errors(504))
    def collections():
        """The stored collections (one per embedding model), the active one and the previous one."""
        listed = gateway.collections.list(deadline())
        return {"alias": listed.alias, "active": listed.active, "previous": listed.previous,
                "collections": [{"name": c.name, "model_id": c.model_id, "vector_size": c.vector_size,
                                 "points": c.points, "active": c.active} for c in listed.collections]}

    if getattr(gateway, "classifier", None) is not None:  # /v1/classify, /v1/classifiers (classifier_api.py)
        app.include_router(classifier_api.build_router(gateway.classifier))
    if getattr(gateway, "adaptation", None) is not None:  # /v1/adaptations (adaptation_api.py)
        app.include_router(adaptation_api.build_router(gateway.adaptation))
    openapi.install(app)

    @app.get("/", include_in_schema=False)
    def index():
        page = STATIC_DIR / "index.html"
        if not page.exists():
            return JSONResponse({"service": "lookalike", "docs": "/docs", "openapi": "/openapi.json"})
        return FileResponse(page, headers=PAGE_HEADERS)

    if STATIC_DIR.exists():
        from fastapi.staticfiles import StaticFiles

        class RevalidatedStaticFiles(StaticFiles):
            """No build step, so no hashed names: browsers revalidate (ETag, 304) and see a new release at once."""

            def file_response(self, *args, **kwargs):
                response = super().file_response(*args, **kwargs)
                response.headers["Cache-Control"] = "no-cache"
                response.headers["X-Content-Type-Options"] = "nosniff"
                return response

        app.mount("/static", RevalidatedStaticFiles(directory=STATIC_DIR), name="static")
    return app


def offline_spec() -> dict:
    """The document a gateway with the default settings serves, built without any dependency."""
    settings = GatewaySettings.model_construct()  # the defaults, not this machine's environment
    service = SimpleNamespace(settings=settings)  # what the routers read when built
    gateway = SimpleNamespace(settings=settings, classifier=service, adaptation=service)
    return create_app(gateway, ApiKeyCheck(frozenset()), readiness=lambda: None).openapi()
