"""lookalike.images: safe decoding of untrusted uploads (synthetic images only: runs anywhere)."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from lookalike.images import (ALLOWED_FORMATS, DEFAULT_MAX_PIXELS, REASONS, ImageRejected, decode_image,
                              sniff_format, to_rgb)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("fmt", sorted(ALLOWED_FORMATS))
def test_allowed_formats_decode_to_loaded_rgb(photo, fmt):
    data = encode(photo, fmt)
    assert sniff_format(data) == fmt
    img = decode_image(data)
    assert img.mode == "RGB" and img.size == (64, 48)
    assert np.asarray(img).shape == (48, 64, 3)  # pixels loaded, detached from the buffer


def test_lossless_formats_keep_pixels(photo):
    for fmt in ("PNG", "BMP"):
        assert np.array_equal(np.asarray(decode_image(encode(photo, fmt))), np.asarray(photo))


def test_bytearray_and_memoryview_accepted(photo):
    data = encode(photo, "PNG")
    assert decode_image(bytearray(data)).size == (64, 48)
    assert decode_image(memoryview(data)).size == (64, 48)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"hello, this is not an image at all", "not_an_image"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "not_an_image"),  # a JPEG header and nothing else
    (b"%PDF-1.7\n...", "unsupported_format"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", "unsupported_format"),
    (b"\xc5\xd0\xd3\xc6" + bytes(28), "unsupported_format"),
    (b"SIMPLE  =                    T".ljust(2880), "unsupported_format"),
])
def test_rejections(data, reason):
    with pytest.raises(ImageRejected) as info:
        decode_image(data)
    assert info.value.reason == reason
    assert info.value.reason in REASONS
    assert isinstance(info.value, ValueError)
    assert str(info.value)


def test_tiff_is_recognised_but_unsupported(photo):
    data = encode(photo, "TIFF")
    assert sniff_format(data) == "TIFF"
    with pytest.raises(ImageRejected) as info:
        decode_image(data)
    assert info.value.reason == "unsupported_format"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(photo, fmt):
    data = encode(photo, fmt)
    with pytest.raises(ImageRejected) as info:
        decode_image(data[: len(data) * 2 // 3])
    assert info.value.reason == "truncated"


def test_pixel_limit_checked_before_decoding():
    # A 10000x5000 PNG compresses to a few KB; it must be rejected from its header.
    data = encode(Image.new("L", (10000, 5000)), "PNG")
    assert len(data) < 200_000
    with pytest.raises(ImageRejected) as info:
        decode_image(data)
    assert info.value.reason == "too_many_pixels"
    assert decode_image(data, max_pixels=60_000_000).size == (10000, 5000)
    with pytest.raises(ImageRejected):
        decode_image(encode(Image.new("RGB", (20, 20)), "PNG"), max_pixels=399)
    assert DEFAULT_MAX_PIXELS == 40_000_000


def test_max_bytes(photo):
    data = encode(photo, "PNG")
    with pytest.raises(ImageRejected) as info:
        decode_image(data, max_bytes=len(data) - 1)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "I;16"])
def test_modes_become_rgb(photo, mode):
    if mode == "I;16":
        img = Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16))
    else:
        img = photo.convert(mode)
    data = encode(img, "JPEG" if mode == "CMYK" else "PNG")
    out = decode_image(data)
    assert out.mode == "RGB" and out.size == (64, 48)


def test_transparency_composited_on_white():
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    out = decode_image(encode(img, "PNG"))
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((5, 5)) == (255, 255, 255)
    # palette with a transparent index
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.putpixel((1, 1), 1)
    out = decode_image(encode(pal, "PNG", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (10, 20, 30)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (10, 10), color) for color in ("red", "blue", "green")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert decode_image(buf.getvalue()).getpixel((3, 3)) == (255, 0, 0)


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(img, "JPEG", exif=exif)
    assert decode_image(data).size == (20, 40)
    assert decode_image(data, apply_exif_orientation=False).size == (40, 20)


def test_to_rgb_is_identity_for_rgb(photo):
    assert to_rgb(photo) is photo


def test_rejection_is_picklable():
    exc = pickle.loads(pickle.dumps(ImageRejected("truncated", "cut short")))
    assert exc.reason == "truncated" and str(exc) == "cut short"


def test_sniff_format_unknown():
    assert sniff_format(b"") is None
    assert sniff_format(b"\x00" * 32) is None


def test_check_size_is_the_one_empty_and_oversize_rule():
    """lookalike.images.check_size: what decode_image, probe_image and the gateway's validation all apply."""
    from lookalike.images import check_size, probe_image

    for data, limit, reason, message in [(b"", 10, "empty", "image is empty"),
                                         (b"x" * 11, 10, "too_large", "image is 11 bytes, above the limit of 10")]:
        for check in (lambda: check_size(data, limit), lambda: decode_image(data, max_bytes=limit),
                      lambda: probe_image(data, max_bytes=limit)):
            with pytest.raises(ImageRejected) as err:
                check()
            assert (err.value.reason, str(err.value)) == (reason, message)
    check_size(b"x" * 10, 10)
    check_size(b"x" * 10**6)  # no limit given: only emptiness is refused
