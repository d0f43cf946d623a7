"""Duplicate detection for ingest, per image: an image byte-identical to another product's (same SHA-256),
or whose embedding is within `duplicate_max_distance` (cosine distance) of one of another product's images.

Looked at for each new image of a batch: the nearest stored products (one SearchByVectors call per
limits.MAX_VECTORS_PER_SEARCH images), earlier products of the same stream (exact, by hash) and earlier products
of the same batch (not stored yet). A product's own images never count as duplicates of each other.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import grpc
import numpy as np

from lookalike import vectors
from lookalike.limits import MAX_VECTORS_PER_SEARCH
from lookalike.search.v1 import search_pb2

from . import metrics
from .errors import ApiError, Deadline
from .search_client import SearchClient

SEEN_DIGESTS_MAX = 200_000  # per stream: exact duplicates among earlier items of the same stream
DUPLICATE_CANDIDATES = 3  # nearest stored products looked at (the product itself may be one)
VECTORS_PER_CALL = MAX_VECTORS_PER_SEARCH  # the search service's SearchByVectors limit


class Duplicate(NamedTuple):
    product_id: str  # the other product
    exact: bool  # byte-identical image
    similarity: float  # cosine similarity
    image: int  # which image of the product being written is the duplicate


class Stream:
    """What one ingest stream remembers across its batches."""

    def __init__(self, detect: bool, cancelled: Callable[[], bool] | None = None):
        self.detect = detect
        self.cancelled = cancelled
        self.digests: OrderedDict[str, str] = OrderedDict()  # image hash -> first product id with it

    def check(self) -> None:
        if self.cancelled is not None and self.cancelled():
            raise ApiError(grpc.StatusCode.CANCELLED, "the client cancelled the stream before this was stored")

    def seen(self, digest: str, product_id: str) -> str | None:
        """Another product of this stream with the same image, if any."""
        first = self.digests.get(digest) if self.detect else None
        return first if first is not None and first != product_id else None

    def remember(self, product_id: str, digests: list[str]) -> None:
        if not self.detect:
            return
        for digest in digests:
            if digest and digest not in self.digests:
                self.digests[digest] = product_id
                if len(self.digests) > SEEN_DIGESTS_MAX:
                    self.digests.popitem(last=False)


def find_duplicates(search: SearchClient, products: list, collection: str, deadline: Deadline, stream: Stream,
                    max_distance: float,
                    project: Callable[[np.ndarray], np.ndarray] = lambda v: v) -> dict[int, Duplicate]:
    """Duplicates of the new images of `products` (objects with .product_id, .digests, .vectors, .fresh (a
    flag per image) and .skip_duplicates), in order: position in `products` -> the first of its images that
    duplicates another product. Products to be skipped are left out of what later ones are compared with.
    `project`: a raw vector as the collection stores it (its catalogue adaptation), for the stored neighbours."""
    fresh = [(n, i) for n, p in enumerate(products) for i, is_new in enumerate(p.fresh) if is_new]
    neighbours: dict[tuple[int, int], list] = {}
    for start in range(0, len(fresh), VECTORS_PER_CALL):
        chunk = fresh[start:start + VECTORS_PER_CALL]
        response = search.call("SearchByVectors", search_pb2.SearchByVectorsRequest(
            vectors=[vectors.pack(project(products[n].vectors[i])) for n, i in chunk], top_k=DUPLICATE_CANDIDATES,
            collection=collection), deadline)
        neighbours.update(zip(chunk, (search.results for search in response.searches)))
    found: dict[int, Duplicate] = {}
    earlier_ids: list[str] = []
    earlier_digests: list[str] = []
    earlier_vectors: list[np.ndarray] = []
    for n, p in enumerate(products):
        duplicate = None
        for i, is_new in enumerate(p.fresh):
            if not is_new:
                continue
            duplicate = _of_image(p, i, stream, neighbours.get((n, i), ()), earlier_ids, earlier_digests,
                                  earlier_vectors, max_distance)
            if duplicate is not None:
                break
        if duplicate is not None:
            metrics.DUPLICATES.labels(kind="exact" if duplicate.exact else "near").inc()
            found[n] = duplicate
            if p.skip_duplicates:
                continue
        if any(p.fresh):
            earlier_ids.extend([p.product_id] * len(p.vectors))
            earlier_digests.extend(p.digests)
            earlier_vectors.extend(p.vectors)
    return found


def _of_image(p, i: int, stream: Stream, stored_hits, earlier_ids, earlier_digests, earlier_vectors,
              max_distance: float) -> Duplicate | None:
    digest, vector = p.digests[i], p.vectors[i]
    seen = stream.seen(digest, p.product_id)
    if seen is not None:
        return Duplicate(seen, True, 1.0, i)
    for hit in stored_hits:
        if hit.product.id == p.product_id:
            continue
        exact = hit.matched_image_sha256 == digest
        if exact or 1.0 - hit.score <= max_distance:
            return Duplicate(hit.product.id, exact, float(hit.score), i)
        break  # the nearest other product is not close enough
    others = [k for k, pid in enumerate(earlier_ids) if pid != p.product_id]  # not stored yet
    if others:
        sims = np.stack([earlier_vectors[k] for k in others]) @ vector
        best = int(np.argmax(sims))
        k = others[best]
        exact = earlier_digests[k] == digest
        if exact or 1.0 - float(sims[best]) <= max_distance:
            return Duplicate(earlier_ids[k], exact, min(1.0, float(sims[best])), i)
    return None
