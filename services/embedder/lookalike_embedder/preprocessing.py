"""Image bytes -> model input: the one preprocessing of the embedder (pure functions, no torch).

    >>> spec = Preprocessing()                     # EfficientNet-Lite0: 256 -> centre 224, (x/255 - .5) / .5
    >>> x = prepare(jpeg_bytes, spec)              # float32 [3, 224, 224]; raises ImageRejected

`prepare` is what the TorchServe handler runs for every request and what the offline path
(`FeatureExtractor.embed_images`) runs after decoding, so served and offline vectors agree.

Steps: `lookalike.images.decode_image` (its safety rules: formats, pixel limit, EXIF, RGB), with
JPEG draft decoding for large photos; short side resized to `resize` with PIL BICUBIC (long side
``int(resize * long / short)``, as torchvision), centre crop `image_size` (offsets rounded as
torchvision); then float ``(x / 255 - mean) / std``, channels first.

Draft decoding: libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 scale for a fraction of the time (a
1600x2136 photo: 30 ms -> 4.5 ms). Scaling in the DCT domain does not give quite the same pixels as
a full decode + bicubic, so `prepare` only lets libjpeg scale down while the short side stays at
least ``draft_margin * resize`` (default 2 x 256 = 512): photos under 1024 px on the short side --
the clothing-small photos, every test photo -- decode exactly as before; larger ones are decoded at
>= 512 px and then resized as usual (cosine to the full decode >= 0.999 on upscaled real photos;
bench/preprocess_bench.py). ``draft_margin=0`` turns it off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from lookalike.crop import CropBox
from lookalike.images import DEFAULT_MAX_PIXELS, decode_image, to_rgb

#: Default draft margin: libjpeg may scale down only while the short side stays >= margin * resize.
DRAFT_MARGIN = 2.0


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects as input (declared per model in model-config.yaml, `handler:`)."""

    image_size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    draft_margin: float = DRAFT_MARGIN
    _mean: np.ndarray = field(init=False, repr=False, compare=False)
    _std: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not (0 < int(self.image_size) <= int(self.resize)):
            raise ValueError(f"image_size {self.image_size} must be positive and <= resize {self.resize}")
        mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0 (got mean={self.mean}, std={self.std})")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "_mean", np.asarray(mean, np.float32).reshape(3, 1, 1))
        object.__setattr__(self, "_std", np.asarray(std, np.float32).reshape(3, 1, 1))

    @classmethod
    def from_config(cls, config: dict | None) -> "Preprocessing":
        """From a model-config.yaml `handler:` mapping (keys image_size, resize, mean, std, draft_margin);
        missing keys keep the defaults."""
        config = config or {}
        kwargs = {}
        for key, cast in (("image_size", int), ("resize", int), ("draft_margin", float)):
            if config.get(key) not in (None, ""):
                kwargs[key] = cast(config[key])
        for key in ("mean", "std"):
            if config.get(key) not in (None, ""):
                kwargs[key] = triple(config[key])
        return cls(**kwargs)

    @property
    def draft_short_side(self) -> int | None:
        """The smallest short side libjpeg may scale a photo down to (None: no draft decoding)."""
        return int(round(self.draft_margin * self.resize)) if self.draft_margin > 0 else None

    def to_config(self) -> dict:
        """The model-config.yaml `handler:` keys from_config reads back (build_mar.py packs a preset's)."""
        return {"image_size": self.image_size, "resize": self.resize, "mean": list(self.mean),
                "std": list(self.std), "draft_margin": self.draft_margin}


def triple(value) -> tuple[float, ...]:
    """A per-channel value of the config (mean, std): a list, "a,b,c", or one number for all three channels."""
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else str(value).split(","))]
    return tuple(values * 3 if len(values) == 1 else values)


#: EfficientNet-Lite0's preprocessing (the default model).
LITE0 = Preprocessing()


def resized_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to `short` (long side truncated, as torchvision)."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def resize_crop(img: Image.Image, spec: Preprocessing = LITE0) -> Image.Image:
    """RGB, short side -> spec.resize (BICUBIC), centre crop spec.image_size; a PIL image."""
    img = to_rgb(img)
    width, height = img.size
    new_w, new_h = resized_size(width, height, spec.resize)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    size = spec.image_size
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_array(img: Image.Image, spec: Preprocessing = LITE0) -> np.ndarray:
    """PIL image (any mode, any size) -> float32 [3, image_size, image_size], normalised."""
    pixels = np.asarray(resize_crop(img, spec), dtype=np.uint8).transpose(2, 0, 1)
    out = pixels.astype(np.float32)
    out /= 255.0  # in place, float32, in this order: bit-identical to the torch reference
    out -= spec._mean
    out /= spec._std
    return out


def prepare(data: bytes | bytearray | memoryview, spec: Preprocessing = LITE0, *,
            max_pixels: int = DEFAULT_MAX_PIXELS, crop: CropBox | None = None) -> np.ndarray:
    """Untrusted image bytes -> float32 [3, image_size, image_size] (raises `ImageRejected`).

    `crop`: only that region of the photo (fractions of the EXIF-oriented photo), cut from the one decode
    before resizing; JPEG draft decoding keeps the region's short side >= draft_margin * resize."""
    draft = spec.draft_short_side
    if crop is not None and draft:
        draft = int(math.ceil(draft / max(min(crop.width, crop.height), 1e-3)))
    img = decode_image(data, max_pixels, min_short_side=draft)
    if crop is not None:
        img = img.crop(crop.pixels(*img.size))
    return to_array(img, spec)


__all__ = ["Preprocessing", "LITE0", "DRAFT_MARGIN", "triple", "resized_size", "resize_crop", "to_array", "prepare"]
