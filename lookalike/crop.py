"""A region of a photo to search with: normalised (x, y, width, height), measured after EXIF orientation.

One definition for every layer: the gateway validates it (gRPC CropBox, REST and CLI `x,y,w,h`), the
embedder client sends it to TorchServe as the input "crop" (its `key`), the handler crops the decoded
photo with it before resizing, and the embedding cache keys on it.
"""
from __future__ import annotations

import math
from typing import NamedTuple

EPS = 1e-6  # float32 fractions (gRPC) may land a hair past 1 when they mean "to the edge"


class CropBox(NamedTuple):
    x: float
    y: float
    width: float
    height: float

    @property
    def key(self) -> str:
        """Canonical text form "x,y,w,h" (the cache key part and the embedder input)."""
        return ",".join(f"{v:.6g}" for v in self)

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in a width x height image, at least one pixel each way."""
        left = min(width - 1, max(0, int(math.floor(self.x * width))))
        top = min(height - 1, max(0, int(math.floor(self.y * height))))
        right = max(left + 1, min(width, int(math.ceil((self.x + self.width) * width))))
        bottom = max(top + 1, min(height, int(math.ceil((self.y + self.height) * height))))
        return left, top, right, bottom


def crop_box(x: float, y: float, width: float, height: float) -> CropBox:
    """A checked CropBox; ValueError saying what is wrong (zero size, outside the photo, not a number)."""
    values = (x, y, width, height)
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"crop must be four numbers x,y,width,height, got {values!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError("crop values must be finite numbers")
    x, y, width, height = values
    if width <= 0 or height <= 0:
        raise ValueError(f"crop has zero or negative size ({width:g} x {height:g}); width and height must be > 0")
    if x < 0 or y < 0:
        raise ValueError(f"crop starts outside the photo (x={x:g}, y={y:g}); x and y must be >= 0")
    if x + width > 1 + EPS or y + height > 1 + EPS:
        raise ValueError(f"crop reaches outside the photo (x+width={x + width:g}, y+height={y + height:g}); "
                         "both must be <= 1")
    return CropBox(x, y, min(width, 1 - x), min(height, 1 - y))


def parse_crop(text: str | None) -> CropBox | None:
    """"x,y,w,h" (REST, CLI, the embedder input) -> CropBox; None/"" -> None; ValueError when malformed."""
    if text is None or not str(text).strip():
        return None
    parts = str(text).split(",")
    if len(parts) != 4:
        raise ValueError(f"crop must be x,y,width,height (four numbers from 0 to 1), got {text!r}")
    return crop_box(*(p.strip() for p in parts))


def from_proto(message) -> CropBox | None:
    """A lookalike.v1.CropBox (None when unset) -> CropBox; ValueError when invalid."""
    if message is None:
        return None
    return crop_box(message.x, message.y, message.width, message.height)
