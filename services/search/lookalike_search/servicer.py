"""The gRPC lookalike.search.v1.SearchService over the collection registry: each RPC validates its request
(bad input -> INVALID_ARGUMENT before any store call), resolves its collection once, calls the VectorStore and
translates between the protos and the store's payloads; `rpc` maps the store's exceptions to status codes.
The process that hosts it is lookalike_search.server."""
from __future__ import annotations

import functools
import logging
import math

import grpc
import numpy as np

from lookalike.limits import (MAX_ID_LENGTH, MAX_IMAGES_PER_PRODUCT, MAX_SCROLL_LIMIT, MAX_TOP_K,
                              MAX_VECTORS_PER_SEARCH)
from lookalike.search.v1 import search_pb2, search_pb2_grpc
from lookalike.v1 import types_pb2
from lookalike.vectors import pack, unpack

from .registry import CollectionRegistry, SingleStore
from .store import (IMAGE_DIGEST, IMAGE_LIST, CollectionMismatch, Hit, NotFound, Record, SearchFilter, StoreError,
                    VectorStore)

log = logging.getLogger("lookalike_search")

SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name  # lookalike.search.v1.SearchService
MAX_POINTS_PER_UPSERT = 10_000
MAX_IDS_PER_REQUEST = 10_000
DEFAULT_SCROLL_LIMIT = 256


class InvalidArgument(ValueError):
    """A request the service refuses (INVALID_ARGUMENT)."""


# ---- proto <-> payload ----------------------------------------------------------------------------

def product_payload(product: types_pb2.Product) -> dict:
    payload = {"title": product.title, "category": product.category, "attributes": dict(product.attributes),
               "image_sha256": product.image_sha256}
    if product.image_sha256s:
        payload[IMAGE_LIST] = list(product.image_sha256s)
    if product.HasField("price"):
        payload["price"] = product.price
    return payload


def payload_product(product_id: str, payload: dict) -> types_pb2.Product:
    """The product of a stored point's payload; image_sha256s as stored on the main point (a hit on another
    image's point, or a product stored before several images, lists what it knows: the main image)."""
    main = str(payload.get("image_sha256") or "")
    product = types_pb2.Product(id=product_id, title=str(payload.get("title") or ""),
                                category=str(payload.get("category") or ""), image_sha256=main,
                                image_sha256s=[str(h) for h in payload.get(IMAGE_LIST) or ([main] if main else [])])
    price = payload.get("price")
    if price is not None:
        product.price = float(price)
    for key, value in (payload.get("attributes") or {}).items():
        product.attributes[str(key)] = str(value)
    return product


def to_filter(message: types_pb2.Filter | None) -> SearchFilter | None:
    if message is None:
        return None
    min_price = message.min_price if message.HasField("min_price") else None
    max_price = message.max_price if message.HasField("max_price") else None
    for name, value in (("filter.min_price", min_price), ("filter.max_price", max_price)):
        if value is not None and not math.isfinite(value):
            raise InvalidArgument(f"{name} must be a finite number, got {value}")
    if min_price is not None and max_price is not None and min_price > max_price:
        raise InvalidArgument(f"filter.min_price ({min_price}) is greater than filter.max_price ({max_price})")
    flt = SearchFilter(category=message.category or None, min_price=min_price, max_price=max_price)
    return None if flt.empty else flt


def check_top_k(top_k: int) -> int:
    if top_k <= 0 or top_k > MAX_TOP_K:
        raise InvalidArgument(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    return top_k


def check_id(product_id: str, what: str = "product_id") -> str:
    if not product_id:
        raise InvalidArgument(f"{what} is empty")
    if len(product_id) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{what} is longer than {MAX_ID_LENGTH} characters")
    if "\x00" in product_id:
        raise InvalidArgument(f"{what} contains a NUL character")
    return product_id


def check_ids(ids, what: str = "product_ids") -> list[str]:
    ids = list(ids)
    if not ids:
        raise InvalidArgument(f"{what} is empty")
    if len(ids) > MAX_IDS_PER_REQUEST:
        raise InvalidArgument(f"{what} has {len(ids)} ids; at most {MAX_IDS_PER_REQUEST} per request")
    for i, pid in enumerate(ids):
        check_id(pid, f"{what}[{i}]")
    return ids


def check_vector(data: bytes, dim: int, what: str = "vector"):
    if not data:
        raise InvalidArgument(f"{what} is empty; expected {dim} packed float32 values ({dim * 4} bytes)")
    try:
        vector = unpack(data, dim)
    except ValueError as exc:
        raise InvalidArgument(f"{what}: {exc}") from None
    if not vector.any():
        raise InvalidArgument(f"{what} is all zeros (cosine similarity is undefined)")
    return vector


# ---- servicer -------------------------------------------------------------------------------------

def rpc(method):
    """Maps exceptions to status codes: bad input -> INVALID_ARGUMENT, NotFound -> NOT_FOUND, transient
    store failures -> UNAVAILABLE, the rest -> INTERNAL; the message says what went wrong."""

    @functools.wraps(method)
    def wrapper(self, request, context: grpc.ServicerContext):
        try:
            return method(self, request, context)
        except NotFound as exc:
            code, message = grpc.StatusCode.NOT_FOUND, str(exc)
        except ValueError as exc:  # InvalidArgument and the store's own validation
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except CollectionMismatch as exc:  # a collection exists with another vector size
            code, message = grpc.StatusCode.FAILED_PRECONDITION, str(exc)
        except StoreError as exc:
            code = grpc.StatusCode.UNAVAILABLE if exc.unavailable else grpc.StatusCode.INTERNAL
            message = str(exc)
            log.error("%s: %s", method.__name__, message)
        except Exception as exc:  # a bug: say so, log the traceback
            log.exception("%s failed", method.__name__)
            code, message = grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}: {type(exc).__name__}: {exc}"
        context.abort(code, message)

    return wrapper


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    """`store`: the service's CollectionRegistry (requests name their collection; "" = the active one), or
    one VectorStore that answers every request (then a request naming a collection is refused)."""

    def __init__(self, store: VectorStore | CollectionRegistry, vector_size: int | None = None):
        self.registry = store if isinstance(store, CollectionRegistry) else SingleStore(store)
        self.default_dim = vector_size  # for a single store that does not say its vector size

    def _store(self, request) -> VectorStore:
        return self.registry.get(request.collection)[1]

    @staticmethod
    def _filter(request) -> SearchFilter | None:
        """The request's optional `filter` as the store's SearchFilter (None when unset or empty)."""
        return to_filter(request.filter) if request.HasField("filter") else None

    def _dim(self, store: VectorStore) -> int:
        return getattr(store, "vector_size", None) or self.default_dim

    @staticmethod
    def _results(hits: list[Hit]) -> list[types_pb2.SearchResult]:
        return [types_pb2.SearchResult(
            product=payload_product(h.product_id, h.payload), score=h.score, matched_image=h.image,
            matched_image_sha256=str(h.payload.get(IMAGE_DIGEST)
                                     or (h.payload.get("image_sha256") or "" if h.image == 0 else "")))
            for h in hits]

    @staticmethod
    def _point(record: Record, with_vectors: bool) -> search_pb2.Point:
        point = search_pb2.Point(product=payload_product(record.product_id, record.payload))
        if with_vectors and record.vector is not None:
            point.vector = pack(record.vector)
            if record.vectors is not None:
                point.more_vectors.extend(pack(v) for v in record.vectors[1:])
        return point

    @rpc
    def UpsertPoints(self, request, context):
        if not request.points:
            raise InvalidArgument("points is empty")
        if len(request.points) > MAX_POINTS_PER_UPSERT:
            raise InvalidArgument(f"{len(request.points)} points; at most {MAX_POINTS_PER_UPSERT} per request")
        store = self._store(request)
        points = []
        for i, point in enumerate(request.points):
            pid = check_id(point.product.id, f"points[{i}].product.id")
            if len(point.more_vectors) >= MAX_IMAGES_PER_PRODUCT:
                raise InvalidArgument(f"points[{i}] has {len(point.more_vectors) + 1} images; at most "
                                      f"{MAX_IMAGES_PER_PRODUCT} per product")
            rows = [check_vector(point.vector, self._dim(store), f"points[{i}].vector")]
            rows += [check_vector(raw, self._dim(store), f"points[{i}].more_vectors[{j}]")
                     for j, raw in enumerate(point.more_vectors)]
            hashes = point.product.image_sha256s
            if hashes and len(hashes) != len(rows):
                raise InvalidArgument(f"points[{i}].product.image_sha256s lists {len(hashes)} images for "
                                      f"{len(rows)} vectors")
            if point.product.HasField("price") and not math.isfinite(point.product.price):
                raise InvalidArgument(f"points[{i}].product.price must be a finite number")
            points.append((pid, np.stack(rows), product_payload(point.product)))
        return search_pb2.UpsertPointsResponse(upserted=store.upsert(points))

    @rpc
    def SearchByVector(self, request, context):
        store = self._store(request)
        vector = check_vector(request.vector, self._dim(store))
        top_k = check_top_k(request.top_k)
        flt = self._filter(request)
        return search_pb2.SearchByVectorResponse(results=self._results(store.search(vector, top_k, flt)))

    @rpc
    def SearchByVectors(self, request, context):
        store = self._store(request)
        if not request.vectors:
            raise InvalidArgument("no vectors given")
        if len(request.vectors) > MAX_VECTORS_PER_SEARCH:
            raise InvalidArgument(f"{len(request.vectors)} vectors in one request; at most {MAX_VECTORS_PER_SEARCH}")
        dim = self._dim(store)
        queries = [check_vector(raw, dim, f"vectors[{i}]") for i, raw in enumerate(request.vectors)]
        top_k = check_top_k(request.top_k)
        flt = self._filter(request)
        return search_pb2.SearchByVectorsResponse(searches=[
            search_pb2.SearchByVectorResponse(results=self._results(store.search(q, top_k, flt))) for q in queries])

    @rpc
    def SearchById(self, request, context):
        pid = check_id(request.product_id)
        top_k = check_top_k(request.top_k)
        flt = self._filter(request)
        return search_pb2.SearchByIdResponse(results=self._results(self._store(request).search_by_id(pid, top_k, flt)))

    @rpc
    def GetPoints(self, request, context):
        ids = check_ids(request.product_ids)
        records = self._store(request).get(ids, with_vectors=request.with_vectors)
        return search_pb2.GetPointsResponse(points=[self._point(r, request.with_vectors) for r in records])

    @rpc
    def DeletePoints(self, request, context):
        ids = check_ids(request.product_ids)
        return search_pb2.DeletePointsResponse(deleted=self._store(request).delete(ids))

    @rpc
    def CountPoints(self, request, context):
        flt = self._filter(request)
        return search_pb2.CountPointsResponse(count=self._store(request).count(flt, images=request.images))

    @rpc
    def ScrollPoints(self, request, context):
        limit = request.limit or DEFAULT_SCROLL_LIMIT
        if limit < 0 or limit > MAX_SCROLL_LIMIT:
            raise InvalidArgument(f"limit must be between 1 and {MAX_SCROLL_LIMIT} (0 = {DEFAULT_SCROLL_LIMIT}), "
                                  f"got {request.limit}")
        flt = self._filter(request)
        records, next_offset = self._store(request).scroll(limit, request.offset or None, flt, request.with_vectors)
        return search_pb2.ScrollPointsResponse(points=[self._point(r, request.with_vectors) for r in records],
                                               next_offset=next_offset or "")

    @rpc
    def ListCollections(self, request, context):
        active, previous, rows = self.registry.describe(with_counts=request.with_counts)
        return search_pb2.ListCollectionsResponse(
            alias=self.registry.alias, active=active, previous=previous or "",
            collections=[search_pb2.Collection(name=name, vector_size=size, points=points or 0,
                                               active=name == active) for name, size, points in rows])

    @rpc
    def CreateCollection(self, request, context):
        if request.vector_size < 0:
            raise InvalidArgument(f"vector_size must be positive, got {request.vector_size}")
        store, created = self.registry.create(request.name, request.vector_size or None)
        return search_pb2.CreateCollectionResponse(created=created, collection=search_pb2.Collection(
            name=request.name, vector_size=store.vector_size, active=request.name == self.registry.active().name))

    @rpc
    def SetAlias(self, request, context):
        active, previous = self.registry.set_alias(request.collection)
        return search_pb2.SetAliasResponse(active=active, previous=previous or "")
