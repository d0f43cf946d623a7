"""The gateway's logic, shared by the gRPC API and the REST proxy.

Every method takes a `Deadline`; each outbound call gets what remains of it. Failures are raised as
`ApiError(grpc.StatusCode, message)`; the gRPC and REST layers translate them (see lookalike.status).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lookalike import crop as crops
from lookalike import images, request_id, status, vectors
from lookalike.limits import MAX_ID_LENGTH, MAX_TOP_K
from lookalike.torchserve import EmbedderClient, EmbedderImageError, EmbedderNotReady
from lookalike.v1 import search_pb2, search_pb2_grpc, types_pb2

from . import metrics, ranking
from .admission import EmbedGate, EmbedQueueFull
from .cache import EmbeddingCache, image_digest
from .catalogue import Catalogue
from .image_store import ImageStore
from .ingest import IngestItem, IngestResult, Ingestor
from .settings import GatewaySettings

log = logging.getLogger(__name__)

RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
DEFAULT_RETRY_AFTER_S = 1.0  # the retry hint of an UNAVAILABLE / RESOURCE_EXHAUSTED answer that names none
RETRY_BACKOFF_S = 0.05  # first pause before retrying an UNAVAILABLE dependency; doubles up to the max
RETRY_BACKOFF_MAX_S = 1.0
MIN_ATTEMPT_S = 0.05  # a retry needs at least this much of the deadline left after its backoff
EMBEDDER_NAME = "embedder (TorchServe)"
# Search-service requests scoped to a collection: without one named, they get the active collection
# (as the gateway last read it, so a query embeds with the model of the collection it searches).
COLLECTION_SCOPED = frozenset({"UpsertPoints", "SearchByVector", "SearchByVectors", "SearchById", "GetPoints",
                               "DeletePoints", "CountPoints", "ScrollPoints"})


class ApiError(Exception):
    """A failure to report to the caller with a gRPC status code and a human message."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None,
                 retry_after_s: float | None = None, details: list[dict] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status  # where REST is more precise than the table (413, 415)
        self.retry_after_s = retry_after_s
        self.details = details or []  # lookalike.status.bad_request / resource_info dicts

    def all_details(self) -> list[dict]:
        """The details, with RetryInfo added on RESOURCE_EXHAUSTED / UNAVAILABLE (REST `details`, gRPC
        google.rpc.Status)."""
        retryable = self.code in status.RETRY_CODES and self.http_status in (None, 429, 503)  # not a 413
        if retryable and not any(d.get("type") == "RetryInfo" for d in self.details):
            return [*self.details, status.retry_info(self.retry_after_s or DEFAULT_RETRY_AFTER_S)]
        return self.details


class Deadline:
    """The time left for one request."""

    def __init__(self, seconds: float):
        self.expires = time.monotonic() + seconds

    def remaining(self, what: str = "request") -> float:
        """Seconds left; raises DEADLINE_EXCEEDED when none are."""
        left = self.expires - time.monotonic()
        if left <= 0:
            raise ApiError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded before {what}")
        return left


@dataclass
class Dependencies:
    """Readiness of what the gateway needs."""
    embedder: bool
    search: bool
    cache: bool

    @property
    def ready(self) -> bool:
        return self.embedder and self.search  # the cache is optional by design


def not_found(resource_type: str, name: str, message: str | None = None) -> ApiError:
    """NOT_FOUND naming what is missing (ResourceInfo)."""
    message = message or f"{resource_type} {name!r} not found"
    return ApiError(grpc.StatusCode.NOT_FOUND, message, details=[status.resource_info(resource_type, name, message)])


def bad_argument(field: str, message: str) -> ApiError:
    """INVALID_ARGUMENT naming the field at fault (BadRequest)."""
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message, details=[status.bad_request(field, message)])


def validate_top_k(top_k: int | None, default: int) -> int:
    """top_k or the default when unset (None); 1..MAX_TOP_K."""
    if top_k is None:
        return default
    if top_k <= 0 or top_k > MAX_TOP_K:
        raise bad_argument("top_k", f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    return top_k


def validate_product_id(product_id: str) -> str:
    problem = ("product id must not be empty" if not product_id else
               f"product id longer than {MAX_ID_LENGTH} characters" if len(product_id) > MAX_ID_LENGTH else
               "product id contains control characters" if any(ord(c) < 32 or c == "\x7f" for c in product_id)
               else None)
    if problem:
        raise bad_argument("product_id", problem)
    return product_id


def validate_filter(flt: types_pb2.Filter) -> types_pb2.Filter:
    if flt.HasField("min_price") and flt.HasField("max_price") and flt.min_price > flt.max_price:
        raise bad_argument("min_price", f"min_price {flt.min_price} is greater than max_price {flt.max_price}")
    for name in ("min_price", "max_price"):
        if flt.HasField(name) and not np.isfinite(getattr(flt, name)):
            raise bad_argument(name, f"{name} must be a finite number")
    return flt


class ImageSearch(NamedTuple):
    """What search_by_image found: results best first, whether the query embedding was cached, the
    category boost applied to their order (0: plain similarity order) and the catalogue's weak-match score
    (0 when not calibrated)."""

    results: list[types_pb2.SearchResult]
    cache_hit: bool
    category_boost: float
    weak_match_score: float = 0.0


def validate_min_score(min_score: float | None) -> float | None:
    """None (keep every result) or a cosine similarity -1..1."""
    if min_score is None:
        return None
    if not np.isfinite(min_score) or min_score < -1 or min_score > 1:
        raise bad_argument("min_score", f"min_score must be between -1 and 1, got {min_score}")
    return float(min_score)


def validate_crop(crop) -> crops.CropBox | None:
    """A lookalike.v1.CropBox, "x,y,w,h" text (REST), a CropBox or None -> a checked CropBox or None
    (INVALID_ARGUMENT)."""
    if crop is None:
        return None
    try:
        if isinstance(crop, str):
            return crops.parse_crop(crop)
        return crop if isinstance(crop, crops.CropBox) else crops.from_proto(crop)
    except ValueError as exc:
        raise bad_argument("crop", str(exc)) from None


def above(results: list[types_pb2.SearchResult], min_score: float | None) -> list[types_pb2.SearchResult]:
    return results if min_score is None else [r for r in results if r.score >= min_score]


def validate_category_boost(boost: float | None, default: float) -> float:
    """boost or the default when unset (None); 0..ranking.MAX_BOOST."""
    if boost is None:
        return default
    if not np.isfinite(boost) or boost < 0 or boost > ranking.MAX_BOOST:
        raise bad_argument("category_boost", f"category_boost must be between 0 and {ranking.MAX_BOOST:g}, got {boost}")
    return float(boost)


class Gateway:
    """Search, similar-by-id, upsert, delete and get over the embedder, the search service and the cache."""

    def __init__(self, settings: GatewaySettings, embedder: EmbedderClient, search_channel: grpc.Channel,
                 cache: EmbeddingCache, image_store: ImageStore):
        self.settings = settings
        self.embedder = embedder
        self.search = search_pb2_grpc.SearchServiceStub(search_channel)
        self.search_health = health_pb2_grpc.HealthStub(search_channel)
        self.cache = cache
        self.images = image_store
        self.catalogue = Catalogue(self)  # the active collection and its model; reindex
        self.classifier = None  # a classifier.ClassifierService, set by the server: category re-ranking
        self.adaptation = None  # an adaptation_api.AdaptationService, set by the server: lookalike adapt
        self.weak_match: Callable[[], float] = lambda: 0.0  # the server sets calibration.WeakMatchCalibrator.value
        # The readiness monitor's view of the embedder (set by the server). While it is not ready, query
        # embeddings are not sent (a restarted TorchServe queues them until the model is loaded): they are
        # retried within the deadline like a refused connection, then answered 503 naming the embedder.
        self.embedder_ready: Callable[[], bool] = lambda: True
        self._embedder_serving = False  # the last probe's verdict (dependencies)
        self.ingestor = Ingestor(self)
        # Uncached queries: bounded concurrent embeds, misses shed when the queue is full (hits never wait).
        self.embed_gate = EmbedGate(settings.query_embed_concurrency, settings.query_embed_queue,
                                    settings.query_embed_retry_after_s)

    # -- helpers -------------------------------------------------------------------------------------

    def check_image(self, image: bytes) -> None:
        """Rejects empty, oversized, non-image, disallowed-format and decompression-bomb uploads with
        INVALID_ARGUMENT/RESOURCE_EXHAUSTED from the header alone (images.probe_image, ~0.05 ms). The
        pixels are decoded once, by the embedder, which answers a corrupt or truncated body with
        INVALID_ARGUMENT too (EmbedderImageError): decoding here as well cost ~1.6 ms per query and up to
        the whole bitmap in memory (120 MB for a 40 MP photo)."""
        if not image:
            raise bad_argument("image", "image is empty")
        if len(image) > self.settings.max_upload_bytes:
            message = f"image is {len(image)} bytes, above the limit of {self.settings.max_upload_bytes}"
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, http_status=413,
                           details=[status.bad_request("image", message)])
        try:
            images.probe_image(image, max_pixels=self.settings.max_image_pixels)
        except images.ImageRejected as exc:
            http = 415 if exc.reason == "unsupported_format" else None
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid image: {exc}", http_status=http,
                           details=[status.bad_request("image", str(exc))]) from None

    def _call_search(self, method: str, request, deadline: Deadline):
        """Calls the search service with what remains of the deadline, retrying UNAVAILABLE with backoff."""
        rpc: Callable = getattr(self.search, method)
        if method in COLLECTION_SCOPED and not request.collection:
            request.collection = self.catalogue.active().collection

        def call(timeout: float):
            started = time.perf_counter()
            try:
                return rpc(request, timeout=timeout, metadata=request_id.metadata())
            finally:
                metrics.SEARCH_LATENCY.labels(method=method).observe(time.perf_counter() - started)
        return self._with_retries("search service", f"calling search service {method}", call, deadline)

    def _with_retries(self, name: str, what: str, call: Callable[[float], object], deadline: Deadline,
                      on_error: Callable[[grpc.RpcError], None] | None = None):
        """`call(timeout)` with what remains of the deadline; UNAVAILABLE is retried with exponential
        backoff while the deadline leaves room for another try, and then reported as UNAVAILABLE naming
        the dependency (never as a bare DEADLINE_EXCEEDED: the caller learns what is down). Any other
        code (INVALID_ARGUMENT, NOT_FOUND, DEADLINE_EXCEEDED, ...) is not retried."""
        backoff = RETRY_BACKOFF_S
        last: grpc.RpcError | None = None
        while True:
            if last is not None and deadline.expires - time.monotonic() <= 0:
                raise self._dependency_error(name, last)  # overslept the backoff: still "unavailable"
            timeout = deadline.remaining(what)
            try:
                return call(timeout)
            except grpc.RpcError as exc:
                if on_error:
                    on_error(exc)
                room = deadline.expires - time.monotonic()
                if exc.code() in RETRYABLE and room > backoff + MIN_ATTEMPT_S:
                    last = exc
                    time.sleep(backoff)
                    backoff = min(backoff * 2, RETRY_BACKOFF_MAX_S)
                    continue
                raise self._dependency_error(name, exc) from None

    @staticmethod
    def _dependency_error(name: str, exc: grpc.RpcError) -> ApiError:
        code = exc.code()
        details = exc.details() or code.name
        if code == grpc.StatusCode.UNAVAILABLE:
            return ApiError(code, f"{name} is unavailable: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ApiError(code, f"{name} did not answer within the deadline")
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED):
            return ApiError(code, details)
        return ApiError(grpc.StatusCode.UNAVAILABLE, f"{name} failed: {code.name}: {details}")

    def _embed(self, image: bytes, deadline: Deadline, embedder: EmbedderClient | None = None,
               crop: crops.CropBox | None = None) -> np.ndarray:
        """Embeds one image (or its region `crop`) via TorchServe, retrying UNAVAILABLE with backoff inside
        the deadline."""
        region = {"crop": crop.key} if crop is not None else {}

        def call(timeout: float) -> np.ndarray:
            if not self.embedder_ready():
                raise EmbedderNotReady()
            try:
                vector = (embedder or self.embedder).embed(image, timeout=timeout, request_id=request_id.current.get(),
                                                           **region)
            except EmbedderImageError as exc:
                metrics.EMBEDDER_CALLS.labels(outcome="bad_image").inc()
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid image: {exc}") from None
            metrics.EMBEDDER_CALLS.labels(outcome="ok").inc()
            return vector

        def count(exc: grpc.RpcError) -> None:
            metrics.EMBEDDER_CALLS.labels(outcome=exc.code().name.lower()).inc()
        return self._with_retries(EMBEDDER_NAME, "calling the embedder", call, deadline, on_error=count)

    def query_embedding(self, image: bytes, deadline: Deadline, target=None,
                        crop: crops.CropBox | None = None) -> tuple[np.ndarray, bool]:
        """The embedding of a query image, or of its region `crop` (with the model of `target`, a
        catalogue.Target, default the active collection's) and whether it came from the cache (keyed by
        the image's hash and the region)."""
        target = target or self.catalogue.active()
        digest = image_digest(image) + (f"@{crop.key}" if crop is not None else "")
        cached = target.cache.get(digest)
        if cached is not None:
            return cached, True
        self.check_image(image)
        try:
            with self.embed_gate.admit(deadline.remaining("waiting for the embedder")):
                vector = self._embed(image, deadline, target.embedder, crop)
        except EmbedQueueFull as exc:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, str(exc), retry_after_s=exc.retry_after_s) from None
        except TimeoutError:
            raise ApiError(grpc.StatusCode.DEADLINE_EXCEEDED,
                           "deadline exceeded while waiting for the embedder (too many uncached queries)") from None
        target.cache.put(digest, vector)
        return vector, False

    # -- API -----------------------------------------------------------------------------------------

    def search_by_image(self, image: bytes, top_k: int | None, flt: types_pb2.Filter,
                        deadline: Deadline, category_boost: float | None = None, crop=None,
                        min_score: float | None = None) -> ImageSearch:
        """Products that look like `image` (or its region `crop`), each once at its best-matching image.
        With a category classifier trained on the active collection and no category filter, candidates are
        re-ranked by category (see lookalike_gateway.ranking); `category_boost` None = the configured
        default, 0 = plain similarity order. Results scoring below `min_score` are dropped."""
        if len(image) > self.settings.max_upload_bytes:
            self.check_image(image)  # raises the size error before hashing a huge body
        top_k = validate_top_k(top_k, self.settings.default_top_k)
        validate_filter(flt)
        boost = validate_category_boost(category_boost, self.settings.category_boost)
        region = validate_crop(crop)
        min_score = validate_min_score(min_score)
        if not image:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "image is empty")
        target = self.catalogue.active()  # one snapshot: embed with the model of the collection searched
        vector, cache_hit = self.query_embedding(image, deadline, target, region)
        weak = self.weak_match()
        classifier = self.classifier
        head = (classifier.category_head(target.model_id, vector.shape[0])
                if classifier is not None and boost > 0 and not flt.category else None)
        limit = min(max(top_k, self.settings.category_rerank_depth), MAX_TOP_K) if head else top_k
        response = self._call_search("SearchByVector", search_pb2.SearchByVectorRequest(
            vector=vectors.pack(target.project(vector)), top_k=limit, filter=flt, collection=target.collection),
            deadline)  # the cache keeps the raw embedding; an adapted collection searches its projection
        results = list(response.results)
        if head is None:
            return ImageSearch(above(results, min_score), cache_hit, 0.0, weak)
        ranked = ranking.rerank_by_category(results, head.probabilities(vector), head.labels, boost)
        return ImageSearch(above(ranked[:top_k], min_score), cache_hit, boost, weak)

    def search_similar(self, product_id: str, top_k: int | None, flt: types_pb2.Filter,
                       deadline: Deadline, min_score: float | None = None) -> list[types_pb2.SearchResult]:
        """"More like this": products nearest to any of the product's images."""
        validate_product_id(product_id)
        top_k = validate_top_k(top_k, self.settings.default_top_k)
        validate_filter(flt)
        min_score = validate_min_score(min_score)
        response = self._call_search("SearchById", search_pb2.SearchByIdRequest(
            product_id=product_id, top_k=top_k, filter=flt), deadline)
        return above(list(response.results), min_score)

    def get_product(self, product_id: str, deadline: Deadline) -> types_pb2.Product:
        validate_product_id(product_id)
        response = self._call_search("GetPoints", search_pb2.GetPointsRequest(product_ids=[product_id]), deadline)
        if not response.points:
            raise not_found("product", product_id)
        return response.points[0].product

    def delete_products(self, product_ids: list[str], deadline: Deadline) -> int:
        if not product_ids:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "no product ids given")
        for product_id in product_ids:
            validate_product_id(product_id)
        with self.catalogue.writing():  # an alias switch waits for it (a reindex's last pass sees it)
            response = self._call_search("DeletePoints", search_pb2.DeletePointsRequest(product_ids=product_ids),
                                         deadline)
        return response.deleted

    def image_of(self, product_id: str, deadline: Deadline, index: int = 0) -> bytes:
        """The stored original of a product's image `index` (0 = main; NOT_FOUND when either is missing)."""
        product = self.get_product(product_id, deadline)
        hashes = list(product.image_sha256s) or ([product.image_sha256] if product.image_sha256 else [])
        if index < 0 or index >= len(hashes):
            raise not_found("image", f"{product_id}/{index}", f"product {product_id!r} has no image {index} "
                                                             f"(it has {len(hashes)}: 0..{len(hashes) - 1})")
        data = self.images.get(hashes[index]) if hashes[index] else None
        if data is None:
            raise not_found("image", product_id, f"no stored image {index} for product {product_id!r}")
        return data

    def ingest(self, items: Iterable[IngestItem | tuple], deadline_for_batch: Callable[[], Deadline],
               cancelled: Callable[[], bool] | None = None) -> Iterator[IngestResult]:
        """Indexes products in micro-batches into the active collection; yields one IngestResult per item,
        in order: CREATED/UPDATED once the search service stored it durably, UNCHANGED when the stored
        image hash and metadata are the same (nothing embedded or written), SKIPPED_DUPLICATE, or FAILED
        with the reason. A bad item fails alone. `cancelled()` true: the caller went away, batches not yet
        stored are dropped. See lookalike_gateway.ingest."""
        return self.ingestor.run(items, deadline_for_batch, cancelled=cancelled)

    def dependencies(self, timeout: float = 1.0) -> Dependencies:
        """Probes the embedder, the search service and Redis."""
        embedder_ok = self.embedder.ping(timeout=timeout)  # Healthy = the model's workers are up
        if embedder_ok and not self._embedder_serving:
            # Coming (back) up: a restarted TorchServe says Healthy before its worker answers (it queues
            # requests while the model loads); a request the handler rejects at once proves the worker.
            embedder_ok = self.embedder.model_ready(timeout=timeout)
        self._embedder_serving = embedder_ok
        try:
            response = self.search_health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            search_ok = response.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            search_ok = False
        return Dependencies(embedder=embedder_ok, search=search_ok, cache=self.cache.ping())
