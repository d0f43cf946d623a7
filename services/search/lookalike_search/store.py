"""The vector store seen by the search service, and what its implementations share.

Product ids are arbitrary strings; Qdrant wants integers or UUIDs, so a point's id is
`uuid5(PRODUCT_NAMESPACE, product_id)` and the original id lives in the payload as "product_id".
Distances are cosine: stored vectors are unit-normalised by the engine and every score is the cosine
similarity (higher = more similar, 1.0 = same direction), whichever engine runs.
"""
from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from .settings import SearchSettings

# Fixed forever: changing it orphans every stored point.
PRODUCT_NAMESPACE = uuid.UUID("5b0e1c7a-8f3d-5e2b-9a41-6c2d7f1e0b93")

PAYLOAD_FIELDS = ("product_id", "title", "category", "price", "attributes", "image_sha256")
# Payload indexes every engine that supports them gets: field -> kind.
PAYLOAD_INDEXES = {"category": "keyword", "price": "float"}


def point_uuid(product_id: str) -> uuid.UUID:
    """The Qdrant point id of a product id."""
    return uuid.uuid5(PRODUCT_NAMESPACE, product_id)


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
    score: float  # cosine similarity
    payload: dict


class Record(NamedTuple):
    product_id: str
    payload: dict
    vector: np.ndarray | None  # the stored (unit-normalised) float32 vector, when asked for


PointIn = tuple[str, np.ndarray, dict]  # (product_id, vector, payload)


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
        """The top_k most similar points, best first."""

    def search_by_id(self, product_id: str, top_k: int, filter: SearchFilter | None = None) -> list[Hit]:
        """Neighbours of a stored point, the point itself excluded; raises NotFound."""

    def get(self, product_ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        """The stored points among product_ids, in request order (duplicates once)."""

    def delete(self, product_ids: Sequence[str]) -> int:
        """Deletes points; returns how many existed."""

    def count(self, filter: SearchFilter | None = None) -> int:
        """Exact number of points (matching the filter)."""

    def scroll(self, limit: int, offset: str | None = None, filter: SearchFilter | None = None,
               with_vectors: bool = False) -> tuple[list[Record], str | None]:
        """One page of at most `limit` stored points (matching the filter), ordered by point id, and the
        opaque offset of the next page (None after the last). `offset` is None for the first page or a
        previous next offset; a malformed one raises ValueError."""

    def close(self) -> None:
        """Flushes and releases the store. Idempotent."""


# ---- helpers shared by the implementations ---------------------------------------------------------

def check_vector(vector, dim: int) -> np.ndarray:
    """A finite, non-zero float32 vector of length dim, or ValueError."""
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim != 1 or arr.shape[0] != dim:
        raise ValueError(f"vector has {arr.shape[0] if arr.ndim == 1 else arr.shape} dimensions, expected {dim}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("vector has non-finite values (NaN or infinity)")
    if not np.any(arr):
        raise ValueError("vector is all zeros (cosine similarity is undefined)")
    return arr


def clean_payload(product_id: str, payload: dict | None) -> dict:
    """The payload to store: product_id set, price a float or absent, attributes a dict of strings."""
    out = {k: v for k, v in (payload or {}).items() if v is not None}
    out["product_id"] = product_id
    if "price" in out:
        price = float(out["price"])
        if not math.isfinite(price):
            raise ValueError(f"price of {product_id!r} is not finite")
        out["price"] = price
    if "attributes" in out:
        out["attributes"] = {str(k): str(v) for k, v in dict(out["attributes"]).items()}
    return out


def dedupe_points(points: Iterable[PointIn], dim: int) -> list[tuple[str, np.ndarray, dict]]:
    """Validates and unit-normalises points (every engine then stores and returns the same vector);
    a product id given twice keeps its last occurrence."""
    by_id: dict[str, tuple[str, np.ndarray, dict]] = {}
    for product_id, vector, payload in points:
        if not isinstance(product_id, str) or not product_id:
            raise ValueError("product id must be a non-empty string")
        try:
            vec = check_vector(vector, dim)
        except ValueError as exc:
            raise ValueError(f"product {product_id!r}: {exc}") from None
        vec = (vec / np.linalg.norm(vec.astype(np.float64))).astype(np.float32)  # cosine: store unit vectors
        by_id.pop(product_id, None)
        by_id[product_id] = (product_id, vec, clean_payload(product_id, payload))
    return list(by_id.values())


def scroll_offset(offset: str | None) -> uuid.UUID | None:
    """The point id a scroll offset names (None: from the start); ValueError when malformed."""
    if not offset:
        return None
    try:
        return uuid.UUID(offset)
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"scroll offset {offset!r} is not one this service returned") from None


def check_scroll_limit(limit: int) -> int:
    if not isinstance(limit, int) or limit <= 0:
        raise ValueError(f"scroll limit must be a positive integer, got {limit!r}")
    return limit


def stored_vector(raw) -> np.ndarray | None:
    """A vector as an engine returns it (a list, the named-vector dict form, or None) as float32."""
    if raw is None:
        return None
    if isinstance(raw, dict):  # named-vector form
        raw = raw.get("", next(iter(raw.values()), None))
    return None if raw is None else np.asarray(raw, dtype=np.float32)


def clamp_score(score: float) -> float:
    """Cosine similarity clipped to [-1, 1] (float rounding can step just outside)."""
    return min(1.0, max(-1.0, float(score)))


def unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def ef_for(top_k: int, search_ef: int) -> int:
    return max(search_ef, top_k)


def make_store(settings: SearchSettings) -> VectorStore:
    """The store for settings.engine (not yet ensured)."""
    if settings.engine == "qdrant-edge":
        from .store_edge import QdrantEdgeStore
        return QdrantEdgeStore.from_settings(settings)
    from .store_qdrant import QdrantClientStore
    return QdrantClientStore.from_settings(settings)


def payload_product_id(payload: Any, fallback: str = "") -> str:
    if isinstance(payload, dict):
        return str(payload.get("product_id", fallback))
    return fallback
