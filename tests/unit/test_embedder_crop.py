"""Search by a region: the embedder's preprocessing crops the one decode (after EXIF orientation, before
resizing), and the handler takes the box as the input "crop"."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from lookalike.crop import CropBox, parse_crop
from lookalike.images import decode_image
from lookalike.vectors import unpack
from lookalike_embedder.handler import ERROR_PREFIX
from lookalike_embedder.preprocessing import prepare, to_array

from .test_embedder_handler import FakeContext, handler  # noqa: F401


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


def test_handler_takes_the_box_as_an_input(handler):  # noqa: F811
    data = encode(photo())
    out = handler.handle([{"data": data, "crop": b"0.5,0.25,0.5,0.5"}, {"data": data},
                          {"data": data, "crop": b"0,0,0,1"}, {"data": data, "crop": b"0.6,0,0.5,1"}],
                         FakeContext())
    expected = handler.handle([{"data": encode(photo().crop((150, 50, 300, 150)))}], FakeContext())[0]
    np.testing.assert_allclose(unpack(out[0]), unpack(expected), atol=1e-5)
    assert not np.allclose(unpack(out[0]), unpack(out[1]), atol=1e-3)
    for bad in out[2:]:
        assert bad.startswith(ERROR_PREFIX)
        assert json.loads(bad)["error"]["reason"] == "invalid_crop"


@pytest.mark.parametrize("text", ["0,0,0,1", "0.6,0,0.5,1", "0,0.9,1,0.2", "-0.1,0,0.5,0.5", "1,1,1", "a,b,c,d"])
def test_bad_boxes_are_refused(text):
    with pytest.raises(ValueError):
        parse_crop(text)
