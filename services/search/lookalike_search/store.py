"""The vector store seen by the search service, and what its implementations share.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from lookalike.limits import MAX_IMAGES_PER_PRODUCT

# Fixed forever: changing it orphans every stored point.
PRODUCT_NAMESPACE = uuid.UUID("5b0e1c7a-8f3d-5e2b-9a41-6c2d7f1e0b93")

IMAGE_INDEX, IMAGE_COUNT, IMAGE_DIGEST, IMAGE_LIST = "image_index", "image_count", "image_digest", "image_sha256s"
# Payload indexes every engine that supports them gets: field -> kind.
PAYLOAD_INDEXES = {"category": "keyword", "price": "float", "product_id": "keyword", IMAGE_INDEX: "integer"}
GROUP_OVERFETCH = 4  # over-fetch factor per round when collapsing image hits into products


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
    """Validates and unit-normalises products' vectors (every engine then stores and returns the same
    vectors): (product_id, (images, dim) array, clean payload); a product id given twice keeps its last
    occurrence."""
    by_id: dict[str, tuple[str, np.ndarray, dict]] = {}
    for product_id, vector, payload in points:
        if not isinstance(product_id, str) or not product_id:
            raise ValueError("product id must be a non-empty string")
        if "\x00" in product_id:
            raise ValueError(f"product id {product_id!r} contains a NUL character")
        rows = np.asarray(vector, dtype=np.float32)
        rows = rows[None, :] if rows.ndim == 1 else rows
        if rows.ndim != 2 or not 1 <= rows.shape[0] <= MAX_IMAGES_PER_PRODUCT:
            raise ValueError(f"product {product_id!r}: expected 1..{MAX_IMAGES_PER_PRODUCT} vectors of {dim} "
                             f"dimensions, got shape {rows.shape}")
        try:
            vecs = np.stack([check_vector(row, dim) for row in rows])
        except ValueError as exc:
            raise ValueError(f"product {product_id!r}: {exc}") from None
        norms = np.linalg.norm(vecs.astype(np.float64), axis=1, keepdims=True)
        vecs = (vecs / norms).astype(np.float32)  # cosine: store unit vectors
        clean = clean_payload(product_id, payload)
        hashes = clean.pop(IMAGE_LIST, None)
        if hashes:
            hashes = [str(h) for h in hashes]
            if len(hashes) != len(vecs):
                raise ValueError(f"product {product_id!r}: {len(hashes)} image hashes for {len(vecs)} vectors")
            clean["image_sha256"] = hashes[0]
            clean[IMAGE_LIST] = hashes
        by_id.pop(product_id, None)
        by_id[product_id] = (product_id, vecs, clean)
    return list(by_id.values())


class ImagePoint(NamedTuple):
    id: uuid.UUID
    vector: np.ndarray
    payload: dict


def image_points(product_id: str, vectors: np.ndarray, payload: dict) -> list[ImagePoint]:
    """The points of one product (from dedupe_points): one per image, each with the product's metadata."""
    hashes = payload.get(IMAGE_LIST) or []
    common = {k: v for k, v in payload.items() if k != IMAGE_LIST}
    common[IMAGE_COUNT] = len(vectors)
    points = []
    for index, vector in enumerate(vectors):
        point = {**common, IMAGE_INDEX: index}
        digest = hashes[index] if hashes else (payload.get("image_sha256") if index == 0 else None)
        if digest:
            point[IMAGE_DIGEST] = digest
        if index == 0 and len(vectors) > 1 and hashes:
            point[IMAGE_LIST] = list(hashes)
        points.append(ImagePoint(point_uuid(product_id, index), vector, point))
    return points


def stale_point_ids(stored: Iterable[Record], new_counts: dict[str, int]) -> list[uuid.UUID]:
    """Points of stored products past their new image count (an upsert with fewer images deletes them)."""
    stale = []
    for record in stored:
        keep = new_counts.get(record.product_id)
        if keep is not None:
            stale.extend(point_uuid(record.product_id, i) for i in range(keep, image_count(record.payload)))
    return stale


def extra_point_ids(records: Iterable[Record]) -> list[tuple[str, int, uuid.UUID]]:
    """(product id, image index, point id) of the images past the main one of stored products."""
    return [(r.product_id, i, point_uuid(r.product_id, i)) for r in records for i in range(1, image_count(r.payload))]


def with_all_vectors(records: list[Record], extra: dict[uuid.UUID, np.ndarray]) -> list[Record]:
    """Records with `vectors` filled from their main vector and `extra` (point id -> vector of images 1..)."""
    out = []
    for r in records:
        rows = [r.vector] + [extra.get(point_uuid(r.product_id, i)) for i in range(1, image_count(r.payload))]
        rows = [row for row in rows if row is not None]  # an image lost mid-upsert: the others still count
        out.append(r._replace(vectors=np.stack(rows) if rows else None))
    return out


def read_products(ids: list[str], retrieve: Callable[[list[uuid.UUID], bool], Iterable[tuple]],
                  with_vectors: bool) -> list[Record]:
    """The stored products among `ids` (unique), in ids order, read through an engine's
    `retrieve(point ids, with_vectors) -> [(point id, payload, raw vector)]`: their main points, plus the
    other images' vectors when asked for."""
    by_pid = {}
    for _, payload, raw in retrieve([point_uuid(i) for i in ids], with_vectors):
        payload = dict(payload or {})
        pid = payload_product_id(payload)
        by_pid[pid] = Record(pid, payload, stored_vector(raw) if with_vectors else None)
    records = [by_pid[i] for i in ids if i in by_pid]
    if not with_vectors:
        return records
    extra = [point_id for _, _, point_id in extra_point_ids(records)]
    vectors = {uuid.UUID(str(point_id)): stored_vector(raw) for point_id, _, raw in retrieve(extra, True)} if extra else {}
    return with_all_vectors(records, vectors)


def all_point_ids(records: Iterable[Record]) -> list[uuid.UUID]:
    return [point_uuid(r.product_id, i) for r in records for i in range(image_count(r.payload))]


def hit(product_id: str, score: float, payload: dict | None) -> Hit:
    payload = dict(payload or {})
    return Hit(product_id, clamp_score(score), payload, image_index(payload))


def collapse(hits: Iterable[Hit]) -> list[Hit]:
    """Each product once, at its first (best) hit; order kept."""
    seen: set[str] = set()
    out = []
    for h in hits:
        if h.product_id not in seen:
            seen.add(h.product_id)
            out.append(h)
    return out


def grouped(query: Callable[[int], list[Hit]], top_k: int) -> list[Hit]:
    """The top_k distinct products from an image-level query `query(limit)` (best first): over-fetch and
    collapse, fetching GROUP_OVERFETCH times more while images of the same products crowd the answer and the
    store has more. Exact whenever the query is (a product's best image ranks where the product does)."""
    limit = top_k
    while True:
        hits = query(limit)
        best = collapse(hits)
        if len(best) >= top_k or len(hits) < limit:
            return best[:top_k]
        limit *= GROUP_OVERFETCH


def merge_best(answers: Iterable[list[Hit]], top_k: int) -> list[Hit]:
    """The top_k products over several queries' answers, each at its best score."""
    best: dict[str, Hit] = {}
    for answer in answers:
        for h in answer:
            if h.product_id not in best or h.score > best[h.product_id].score:
                best[h.product_id] = h
    return sorted(best.values(), key=lambda h: -h.score)[:top_k]


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


def payload_product_id(payload: Any, fallback: str = "") -> str:
    if isinstance(payload, dict):
        return str(payload.get("product_id", fallback))
    return fallback
