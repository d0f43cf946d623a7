"""The gateway's logic, shared by the gRPC API and the REST proxy: it assembles the pieces (the search
client, the collection manager, the ingest pipeline, the reindexer) and answers searches, product reads
and deletes itself.

Every method takes a `Deadline` (errors.py); each outbound call gets what remains of it. Failures are
raised as `ApiError(grpc.StatusCode, message)`; the gRPC and REST layers translate them (see
lookalike.status).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lookalike import crop as crops
from lookalike import vectors
from lookalike.embedder_client import EmbedderClient
from lookalike.limits import MAX_TOP_K
from lookalike.search.v1 import search_pb2, search_pb2_grpc
from lookalike.v1 import types_pb2

from . import ranking
from .admission import EmbedGate, EmbedQueueFull
from .cache import EmbeddingCache, image_digest
from .collection_manager import CollectionManager, Target
from .embedding import embed_one
from .errors import ApiError, Deadline, not_found
from .image_store import ImageStore
from .ingest_pipeline import IngestPipeline
from .ingest_types import IngestItem, IngestResult, image_hashes
from .reindex import Reindexer
from .search_client import SearchClient
from .settings import GatewaySettings
from .validation import (check_image, check_size, validate_category_boost, validate_crop, validate_filter,
                         validate_min_score, validate_product_id, validate_top_k)

log = logging.getLogger(__name__)

@dataclass
class Dependencies:
    """Readiness of what the gateway needs."""
    embedder: bool
    search: bool
    cache: bool

    @property
    def ready(self) -> bool:
        return self.embedder and self.search  # the cache is optional by design


class ImageSearch(NamedTuple):
    """What search_by_image found: results best first, whether the query embedding was cached, the
    category boost applied to their order (0: plain similarity order) and the catalogue's weak-match score
    (0 when not calibrated)."""

    results: list[types_pb2.SearchResult]
    cache_hit: bool
    category_boost: float
    weak_match_score: float = 0.0


def above(results: list[types_pb2.SearchResult], min_score: float | None) -> list[types_pb2.SearchResult]:
    return results if min_score is None else [r for r in results if r.score >= min_score]


class Gateway:
    """Search, similar-by-id, upsert, delete and get over the embedder, the search service and the cache."""

    def __init__(self, settings: GatewaySettings, embedder: EmbedderClient, search_channel: grpc.Channel,
                 cache: EmbeddingCache, image_store: ImageStore):
        self.settings = settings
        self.embedder = embedder
        # calls without a collection go to the active one (as last read)
        self.search = SearchClient(search_pb2_grpc.SearchServiceStub(search_channel),
                                   default_collection=lambda: self.collections.active().collection)
        self.search_health = health_pb2_grpc.HealthStub(search_channel)
        self.cache = cache
        self.image_store = image_store
        self.collections = CollectionManager(settings, self.search, embedder, cache)  # the alias; models
        self.classifier = None  # a classifier.ClassifierService, set by the server: category re-ranking
        self.adaptation = None  # an adaptation_api.AdaptationService, set by the server: lookalike adapt
        self.weak_match: Callable[[], float] = lambda: 0.0  # the server sets calibration.WeakMatchCalibrator.value
        # The readiness monitor's view of the embedder (set by the server). While it is not ready, query
        # embeddings are not sent (a restarted TorchServe queues them until the model is loaded): they are
        # retried within the deadline like a refused connection, then answered 503 naming the embedder.
        self.embedder_ready: Callable[[], bool] = lambda: True
        self._embedder_serving = False  # the last probe's verdict (dependencies)
        self.ingest_pipeline = IngestPipeline(settings, self.search, self.collections, image_store,
                                              classifier=lambda: self.classifier)
        self.reindexer = Reindexer(settings, self.search, self.collections, self.ingest_pipeline, image_store)
        # Uncached queries: bounded concurrent embeds, misses shed when the queue is full (hits never wait).
        self.embed_gate = EmbedGate(settings.query_embed_concurrency, settings.query_embed_queue,
                                    settings.query_embed_retry_after_s)

    # -- helpers -------------------------------------------------------------------------------------

    def query_embedding(self, image: bytes, deadline: Deadline, target: Target | None = None,
                        crop: crops.CropBox | None = None) -> tuple[np.ndarray, bool]:
        """The embedding of a query image, or of its region `crop` (with the model of `target`, a
        collection_manager.Target, default the active collection's) and whether it came from the cache
        (keyed by the image's hash and the region)."""
        target = target or self.collections.active()
        digest = image_digest(image) + (f"@{crop.key}" if crop is not None else "")
        cached = target.cache.get(digest)
        if cached is not None:
            return cached, True
        check_image(image, self.settings)
        try:
            with self.embed_gate.admit(deadline.remaining("waiting for the embedder")):
                vector = embed_one(target.embedder, image, deadline, self.embedder_ready, crop)
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
        top_k = validate_top_k(top_k, self.settings.default_top_k)
        validate_filter(flt)
        boost = validate_category_boost(category_boost, self.settings.category_boost)
        region = validate_crop(crop)
        min_score = validate_min_score(min_score)
        check_size(image, self.settings)  # before hashing a huge body
        target = self.collections.active()  # one snapshot: embed with the model of the collection searched
        vector, cache_hit = self.query_embedding(image, deadline, target, region)
        weak = self.weak_match()
        classifier = self.classifier
        head = (classifier.category_head(target.model_id, vector.shape[0])
                if classifier is not None and boost > 0 and not flt.category else None)
        limit = min(max(top_k, self.settings.category_rerank_depth), MAX_TOP_K) if head else top_k
        response = self.search.call("SearchByVector", search_pb2.SearchByVectorRequest(
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
        response = self.search.call("SearchById", search_pb2.SearchByIdRequest(
            product_id=product_id, top_k=top_k, filter=flt), deadline)
        return above(list(response.results), min_score)

    def get_product(self, product_id: str, deadline: Deadline) -> types_pb2.Product:
        validate_product_id(product_id)
        response = self.search.call("GetPoints", search_pb2.GetPointsRequest(product_ids=[product_id]), deadline)
        if not response.points:
            raise not_found("product", product_id)
        return response.points[0].product

    def delete_products(self, product_ids: list[str], deadline: Deadline) -> int:
        if not product_ids:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "no product ids given")
        for product_id in product_ids:
            validate_product_id(product_id)
        with self.collections.writing():  # an alias switch waits for it (a reindex's last pass sees it)
            response = self.search.call("DeletePoints", search_pb2.DeletePointsRequest(product_ids=product_ids),
                                         deadline)
        return response.deleted

    def image_of(self, product_id: str, deadline: Deadline, index: int = 0) -> bytes:
        """The stored original of a product's image `index` (0 = main; NOT_FOUND when either is missing)."""
        product = self.get_product(product_id, deadline)
        hashes = image_hashes(product)
        if index < 0 or index >= len(hashes):
            raise not_found("image", f"{product_id}/{index}", f"product {product_id!r} has no image {index} "
                                                             f"(it has {len(hashes)}: 0..{len(hashes) - 1})")
        data = self.image_store.get(hashes[index]) if hashes[index] else None
        if data is None:
            raise not_found("image", product_id, f"no stored image {index} for product {product_id!r}")
        return data

    def ingest(self, items: Iterable[IngestItem], deadline_for_batch: Callable[[], Deadline],
               cancelled: Callable[[], bool] | None = None) -> Iterator[IngestResult]:
        """Indexes products in micro-batches into the active collection; yields one IngestResult per item,
        in order: CREATED/UPDATED once the search service stored it durably, UNCHANGED when the stored
        image hash and metadata are the same (nothing embedded or written), SKIPPED_DUPLICATE, or FAILED
        with the reason. A bad item fails alone. `cancelled()` true: the caller went away, batches not yet
        stored are dropped. See lookalike_gateway.ingest_pipeline."""
        return self.ingest_pipeline.run(items, deadline_for_batch, cancelled=cancelled)

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
