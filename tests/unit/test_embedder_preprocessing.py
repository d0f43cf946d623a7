"""lookalike_embedder.preprocessing: the one bytes -> model input function (draft decoding, spec)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lookalike.images import ImageRejected, decode_image
from lookalike_embedder import model as lk
from lookalike_embedder.preprocessing import LITE0, Preprocessing, prepare


def jpeg(size, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB").resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_prepare_is_the_offline_preprocessing_bit_for_bit():
    data = jpeg((400, 534))
    x = prepare(data)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert np.array_equal(x, lk.preprocess(decode_image(data)).numpy())


def test_draft_decoding_only_for_large_jpegs():
    assert LITE0.draft_short_side == 512
    small = jpeg((800, 1000))   # short side < 2 x 512: decoded in full
    assert decode_image(small, min_short_side=512).size == (800, 1000)
    big = jpeg((2400, 3200))    # libjpeg scales by 1/4 -> 600 x 800 (short side stays >= 512)
    assert decode_image(big, min_short_side=512).size == (600, 800)
    assert decode_image(big).size == (2400, 3200)
    png = io.BytesIO()
    Image.new("RGB", (2400, 3200)).save(png, "PNG")
    assert decode_image(png.getvalue(), min_short_side=512).size == (2400, 3200)  # JPEG only
    # the draft-decoded photo embeds like the full decode (smooth image: near-identical pixels)
    full = lk.preprocess(decode_image(big)).numpy()
    assert np.abs(prepare(big) - full).mean() < 0.02
    off = Preprocessing(draft_margin=0)
    assert off.draft_short_side is None and np.array_equal(prepare(big, off), full)


def test_spec_from_config_and_validation():
    spec = Preprocessing.from_config({"image_size": 240, "resize": 274, "mean": [0.485, 0.456, 0.406],
                                      "std": "0.229,0.224,0.225"})
    assert (spec.image_size, spec.resize, spec.std) == (240, 274, (0.229, 0.224, 0.225))
    assert prepare(jpeg((300, 400)), spec).shape == (3, 240, 240)
    assert Preprocessing.from_config({"mean": 0.5}).mean == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="image_size"):
        Preprocessing(image_size=300, resize=256)
    with pytest.raises(ValueError, match="std"):
        Preprocessing(std=(0.1, 0.0, 0.1))
    with pytest.raises(ImageRejected):
        prepare(b"not an image")
