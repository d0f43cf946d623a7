"""What the VectorStore implementations share: products <-> image points.

A product in (lookalike_search.store.PointIn) is validated, unit-normalised and cut into one point per
image (`dedupe_points`, `image_points`); points read back become products again (`read_products`), and
image-level hits become distinct products at their best image (`grouped`, `collapse`, `merge_best`).
Engines call these with their own retrieve/query functions, so every engine answers the same way (the
congruence suite, tests/unit/test_search_store.py, checks it).
"""
from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from lookalike.limits import MAX_IMAGES_PER_PRODUCT

from .store import (IMAGE_COUNT, IMAGE_DIGEST, IMAGE_INDEX, IMAGE_LIST, Hit, PointIn, Record, image_count, image_index,
                    point_uuid)

GROUP_OVERFETCH = 4  # over-fetch factor per round when collapsing image hits into products


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
