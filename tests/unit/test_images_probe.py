"""lookalike.images.probe_image: header-only checks (the ingest path's cheap gate before the embedder)."""
from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from lookalike.images import ImageRejected, decode_image, probe_image


def jpeg(size=(40, 30)) -> bytes:
    out = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(out, "JPEG")
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def test_probe_reads_the_header_only():
    assert probe_image(jpeg()) == ("JPEG", 40, 30)
    data = jpeg((400, 300))
    truncated = data[:len(data) // 2]
    assert probe_image(truncated)[1:] == (400, 300)  # the body is the decoder's business
    with pytest.raises(ImageRejected) as err:
        decode_image(truncated)
    assert err.value.reason == "truncated"


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"hello world, no image here", "not_an_image"),
    (b"II*\x00" + b"\x00" * 60, "unsupported_format"),
    (png_header(100_000, 100_000), "too_many_pixels"),
    (b"\xff\xd8\xff" + b"\x00" * 10, "not_an_image"),
])
def test_probe_refuses(data, reason):
    with pytest.raises(ImageRejected) as err:
        probe_image(data, max_pixels=40_000_000)
    assert err.value.reason == reason


def test_probe_byte_limit():
    with pytest.raises(ImageRejected) as err:
        probe_image(jpeg(), max_bytes=10)
    assert err.value.reason == "too_large"
