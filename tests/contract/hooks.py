"""Schemathesis hooks for the contract tests (SCHEMATHESIS_HOOKS=tests.contract.hooks): what the OpenAPI
document cannot express, told to the generator.

- The multipart `image` fields declare their content types (encoding: image/jpeg, image/png...); these
  strategies make real, small photos of those formats (the spec cannot say "a decodable JPEG").
- min_price must not exceed max_price (a rule across two fields, stated in the descriptions): cases that
  break it are not generated. Likewise a `crop` box reaching outside the photo (x + width > 1: a rule across
  the four numbers of the field, stated in its description).
- Valid cases get a real image where the Examples phase left the field empty.
- Multipart parts are text: a number in a string field arrives as a valid string, an empty list as no
  field at all; such "invalid" cases are not generated.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode

SPEC = Path(__file__).resolve().parents[2] / "openapi.json"
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF", "image/bmp": "BMP"}


@st.composite
def photos(draw, fmt: str) -> bytes:
    """A small picture: a few coloured rectangles on a background, 8-96 pixels a side."""
    width, height = draw(st.integers(8, 96)), draw(st.integers(8, 96))
    colour = st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
    picture = Image.new("RGB", (width, height), draw(colour))
    for _ in range(draw(st.integers(0, 3))):
        x0, y0 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
        x1, y1 = draw(st.integers(x0, width - 1)), draw(st.integers(y0, height - 1))
        picture.paste(draw(colour), (x0, y0, x1 + 1, y1 + 1))
    out = io.BytesIO()
    picture.save(out, format=fmt)
    return out.getvalue()


for media_type, image_format in FORMATS.items():
    schemathesis.openapi.media_type(media_type, photos(image_format))


def _photo_for(seed: bytes) -> bytes:
    """A fixed small JPEG chosen by `seed` (deterministic under the run's seed)."""
    shade = hashlib.sha256(seed).digest()
    out = io.BytesIO()
    Image.new("RGB", (32, 24), tuple(shade[:3])).save(out, format="JPEG")
    return out.getvalue()


def _is_image(data) -> bool:
    if not isinstance(data, (bytes, bytearray)) or not data:
        return False
    try:
        with Image.open(io.BytesIO(bytes(data))) as picture:
            picture.verify()
            return picture.format in FORMATS.values()
    except Exception:  # noqa: BLE001 - anything PIL cannot read is not an image here
        return False


def _prices_in_order(values) -> bool:
    values = getattr(values, "body", values)  # a multipart body comes with its parts' content types
    if not isinstance(values, dict):
        return True
    try:
        return float(values["min_price"]) <= float(values["max_price"])
    except (KeyError, TypeError, ValueError):  # absent, or not numbers (a negative case): as generated
        return True


def _crop_in_photo(values) -> bool:
    from lookalike.crop import parse_crop

    values = getattr(values, "body", values)
    crop = values.get("crop") if isinstance(values, dict) else None
    if not isinstance(crop, str):
        return True
    try:
        parse_crop(crop)
    except ValueError:
        # four numbers (the pattern) that make no box in the photo: a rule the schema cannot state
        return not re.fullmatch(r" *[0-9]*\.?[0-9]+ *(, *[0-9]*\.?[0-9]+ *){3}", crop)
    return True


def _multipart_text_fields() -> dict[tuple[str, str], set[str]]:
    """(METHOD, path) -> the multipart fields declared as strings, from the committed spec."""
    spec = json.loads(SPEC.read_text())
    fields = {}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            body = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if body:
                schema = spec["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[-1]]
                fields[(method.upper(), path)] = {name for name, prop in schema["properties"].items()
                                                  if prop.get("type") == "string"}
    return fields


TEXT_FIELDS = _multipart_text_fields()


def _sendable(ctx, body) -> bool:
    """False for multipart bodies whose "violation" does not survive the wire: every part is text, so a
    number or boolean in a string field arrives as a valid string, and an empty list as a field left
    out (the API cannot tell either from a valid request)."""
    parts = getattr(body, "body", body)
    if not isinstance(parts, dict):
        return True
    operation = getattr(ctx, "operation", None)
    text = TEXT_FIELDS.get((getattr(operation, "method", "").upper(), getattr(operation, "path", "")), set())
    for name, value in parts.items():
        if isinstance(value, (list, tuple)) and not value:
            return False
        if name in text and isinstance(value, (int, float, bool)):
            return False
    return True


@schemathesis.hook
def filter_body(ctx, body) -> bool:
    return _prices_in_order(body) and _crop_in_photo(body) and _sendable(ctx, body)


@schemathesis.hook
def filter_query(ctx, query) -> bool:
    return _prices_in_order(query)


@schemathesis.hook
def before_call(ctx, case, kwargs) -> None:
    """A real image where a case meant to be valid has an empty or undecodable one: the Examples phase
    fills the field without the media-type strategies above."""
    meta = getattr(case, "_meta", None)
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return
    if isinstance(case.body, dict) and "image" in case.body and not _is_image(case.body["image"]):
        original = case.body["image"]
        case.body["image"] = _photo_for(original if isinstance(original, bytes) else str(original).encode())
