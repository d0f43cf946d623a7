"""The vector store seen by the search service: the VectorStore protocol, its types and errors, the point ids.
(What its implementations share to map products to image points and back is lookalike_search.points.)

Products have one or more images, each its own point: image n of a product is the point
`point_uuid(product_id, n)` (image 0, the main one, is `uuid5(PRODUCT_NAMESPACE, product_id)`: a product
stored before products had several images is its main image). Every point's payload holds the product's
metadata ("product_id", title, category, price, attributes, "image_sha256" of the main image) plus
"image_index", "image_count" and "image_digest" (that image's SHA-256); the main point also lists every
image's hash ("image_sha256s") when there are several. Searches answer with distinct products, each at
its best-matching image (`Hit.image`); counts, scrolls and gets see products (their main points).
Distances are cosine: stored vectors are unit-normalised by the engine and every score is the cosine
similarity (higher = more similar, 1.0 = same direction), whichever engine runs.
"""
from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

# Fixed forever: changing it orphans every stored point.
PRODUCT_NAMESPACE = uuid.UUID("5b0e1c7a-8f3d-5e2b-9a41-6c2d7f1e0b93")

IMAGE_INDEX, IMAGE_COUNT, IMAGE_DIGEST, IMAGE_LIST = "image_index", "image_count", "image_digest", "image_sha256s"
# Payload indexes every engine that supports them gets: field -> kind.
PAYLOAD_INDEXES = {"category": "keyword", "price": "float", "product_id": "keyword", IMAGE_INDEX: "integer"}


def point_uuid(product_id: str, image: int = 0) -> uuid.UUID:
    """The Qdrant point id of a product's image (0 = the main image: the id of the product itself)."""
    return uuid.uuid5(PRODUCT_NAMESPACE, product_id if image == 0 else f"{product_id}\x00{image}")


def image_count(payload: dict) -> int:
    """How many images the product of a stored point has (1 for points stored before several images)."""
    try:
        return max(1, int(payload.get(IMAGE_COUNT, 1)))
    except (TypeError, ValueError):
        return 1


def image_index(payload: dict) -> int:
    try:
        return int(payload.get(IMAGE_INDEX, 0))
    except (TypeError, ValueError):
        return 0


class StoreError(RuntimeError):
    """The store failed (I/O, engine or connection error); `unavailable` marks transient ones."""

    def __init__(self, message: str, unavailable: bool = False):
        super().__init__(message)
        self.unavailable = unavailable


class NotFound(KeyError):
    """A product id the operation needs is not stored."""

    def __init__(self, product_id: str):
        super().__init__(product_id)
        self.product_id = product_id

    def __str__(self) -> str:
        return f"product {self.product_id!r} not found"


class CollectionMismatch(StoreError):
    """An existing collection was created with another vector size or distance."""


@dataclass(frozen=True)
class SearchFilter:
    """Category equality and an inclusive price range; None fields do not filter."""

    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None

    def __post_init__(self):
        for name in ("min_price", "max_price"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number")
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise ValueError(f"min_price ({self.min_price}) is greater than max_price ({self.max_price})")

    @property
    def empty(self) -> bool:
        return not self.category and self.min_price is None and self.max_price is None

    def matches(self, payload: dict) -> bool:
        """Reference semantics (used by tests and the benchmark's exact ground truth)."""
        if self.category and payload.get("category") != self.category:
            return False
        if self.min_price is not None or self.max_price is not None:
            price = payload.get("price")
            if price is None:
                return False
            if self.min_price is not None and price < self.min_price:
                return False
            if self.max_price is not None and price > self.max_price:
                return False
        return True


class Hit(NamedTuple):
    product_id: str
    score: float  # cosine similarity (of the product's best-matching image)
    payload: dict  # of the matched image's point
    image: int = 0  # index of the matched image (0 = main)


class Record(NamedTuple):
    product_id: str
    payload: dict  # of the main image's point (IMAGE_LIST names every image when there are several)
    vector: np.ndarray | None  # the main image's stored (unit-normalised) float32 vector, when asked for
    vectors: np.ndarray | None = None  # (images, dim): every image's vector in image order, when asked for


# (product_id, vector, payload): vector (dim,) for one image or (images, dim), main first; payload may
# list the images' hashes under IMAGE_LIST (one per image).
PointIn = tuple[str, np.ndarray, dict]


@runtime_checkable
class VectorStore(Protocol):
    """What the search service needs from a vector database. Implementations are thread-safe."""

    vector_size: int

    def ensure_collection(self) -> None:
        """Creates the collection and payload indexes if missing; raises CollectionMismatch when an
        existing one has another vector size or distance. Idempotent; other calls need it first."""

    def upsert(self, points: Sequence[PointIn]) -> int:
        """Inserts or replaces points; returns after the write is durably applied (an acknowledged
        write survives kill -9). Returns the number of points written."""

    def search(self, vector: np.ndarray, top_k: int, filter: SearchFilter | None = None) -> list[Hit]:
        """The top_k most similar products, best first, each once at its best-matching image."""

    def search_by_id(self, product_id: str, top_k: int, filter: SearchFilter | None = None) -> list[Hit]:
        """Products nearest to any image of a stored product (score: the best image pair), the product
        itself excluded; raises NotFound."""

    def get(self, product_ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        """The stored products among product_ids, in request order (duplicates once); with_vectors fills
        `vector` (main image) and `vectors` (every image)."""

    def delete(self, product_ids: Sequence[str]) -> int:
        """Deletes products with all their images; returns how many existed."""

    def count(self, filter: SearchFilter | None = None, images: bool = False) -> int:
        """Exact number of products (images with `images`) matching the filter."""

    def scroll(self, limit: int, offset: str | None = None, filter: SearchFilter | None = None,
               with_vectors: bool = False) -> tuple[list[Record], str | None]:
        """One page of at most `limit` stored products (matching the filter), ordered by the point id of
        their main image, and the opaque offset of the next page (None after the last). `offset` is None for
        the first page or a previous next offset; a malformed one raises ValueError."""

    def close(self) -> None:
        """Flushes and releases the store. Idempotent."""
