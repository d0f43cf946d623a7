"""lookalike_embedder.preprocessing: the one bytes -> model input function (draft decoding, spec, and the crop
of a region: cut from the one decode after EXIF orientation, before resizing)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lookalike.crop import CropBox
from lookalike.images import ImageRejected, decode_image
from lookalike_embedder import model as lk
from lookalike_embedder.preprocessing import LITE0, Preprocessing, prepare, to_array


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


# ---- a region (search by a region: the gateway's crop) ------------------------------------------------

def photo(size=(300, 200), seed=3) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB").resize(size, Image.BICUBIC)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_the_whole_box_is_the_whole_photo():
    data = encode(photo())
    np.testing.assert_array_equal(prepare(data, crop=CropBox(0, 0, 1, 1)), prepare(data))


def test_a_region_is_cut_before_resizing():
    img = photo()
    box = CropBox(0.5, 0.25, 0.5, 0.5)  # the right half, middle rows: pixels 150..300 x 50..150
    expected = prepare(encode(img.crop((150, 50, 300, 150))))
    np.testing.assert_array_equal(prepare(encode(img), crop=box), expected)
    assert not np.array_equal(prepare(encode(img), crop=box), prepare(encode(img)))


def test_the_box_is_measured_after_exif_orientation():
    img = photo((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: 200 x 300
    data = encode(img, "JPEG", exif=exif, quality=95)
    shown = decode_image(data)
    assert shown.size == (200, 300)
    box = CropBox(0.0, 0.5, 1.0, 0.5)  # the bottom half of the photo as displayed
    expected = to_array(shown.crop((0, 150, 200, 300)))
    np.testing.assert_array_equal(prepare(data, crop=box), expected)


def test_draft_decoding_keeps_enough_pixels_in_the_region():
    big = photo((2400, 1800))
    data = encode(big, "JPEG", quality=90)
    box = CropBox(0.25, 0.25, 0.1, 0.1)  # 240 x 180 pixels of the full photo
    full = to_array(decode_image(data).crop(box.pixels(2400, 1800)))
    cropped = prepare(data, crop=box)
    cosine = float((full.ravel() @ cropped.ravel()) / (np.linalg.norm(full) * np.linalg.norm(cropped)))
    assert cosine > 0.999  # no 1/8-scale decode of a tenth of the photo
