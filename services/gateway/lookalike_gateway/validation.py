"""Checks of request fields shared by the gRPC and REST APIs and the ingest pipeline: each raises
INVALID_ARGUMENT naming the field (or RESOURCE_EXHAUSTED / 413 for an oversized image)."""
from __future__ import annotations

import grpc
import numpy as np

from lookalike import crop as crops
from lookalike import images, status
from lookalike.limits import MAX_CATEGORY_BOOST, MAX_ID_LENGTH, MAX_TOP_K
from lookalike.v1 import types_pb2

from .errors import ApiError, bad_argument


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


def validate_category_boost(boost: float | None, default: float) -> float:
    """boost or the default when unset (None); 0..MAX_CATEGORY_BOOST."""
    if boost is None:
        return default
    if not np.isfinite(boost) or boost < 0 or boost > MAX_CATEGORY_BOOST:
        raise bad_argument("category_boost",
                           f"category_boost must be between 0 and {MAX_CATEGORY_BOOST:g}, got {boost}")
    return float(boost)


def check_size(image: bytes, limits) -> None:
    """The checks that need no look inside: empty (INVALID_ARGUMENT) or above `limits.max_upload_bytes`
    (RESOURCE_EXHAUSTED, HTTP 413); made before a body is hashed or queued for the embedder."""
    try:
        images.check_size(image, limits.max_upload_bytes)  # the rule is lookalike.images'; the status is ours
    except images.ImageRejected as exc:
        if exc.reason != "too_large":
            raise bad_argument("image", exc.message) from None
        raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message, http_status=413,
                       details=[status.bad_request("image", exc.message)]) from None


def check_image(image: bytes, limits) -> None:
    """Rejects empty, oversized, non-image, disallowed-format and decompression-bomb uploads with
    INVALID_ARGUMENT/RESOURCE_EXHAUSTED from the header alone (images.probe_image, ~0.05 ms). The
    pixels are decoded once, by the embedder, which answers a corrupt or truncated body with
    INVALID_ARGUMENT too (EmbedderImageError): decoding here as well cost ~1.6 ms per query and up to
    the whole bitmap in memory (120 MB for a 40 MP photo). `limits`: the GatewaySettings (max_upload_bytes,
    max_image_pixels)."""
    check_size(image, limits)
    try:
        images.probe_image(image, max_pixels=limits.max_image_pixels)
    except images.ImageRejected as exc:
        http = 415 if exc.reason == "unsupported_format" else None
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid image: {exc}", http_status=http,
                       details=[status.bad_request("image", str(exc))]) from None
