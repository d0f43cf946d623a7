"""Hostile uploads for the gateway tests: what attackers and broken clients send instead of a photo."""
from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

MB = 1024 * 1024


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG whose IHDR claims width x height RGB pixels (10 G pixels by default), with a
    tiny IDAT: decoding it naively would allocate ~30 GB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * 3 * 16
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(row * 16))
            + _chunk(b"IEND", b""))


def png_zlib_bomb(side: int = 6000) -> bytes:
    """A real PNG of side x side (36 MP, under the default pixel limit) that compresses to ~100 KB."""
    img = Image.new("L", (side, side))
    out = io.BytesIO()
    img.save(out, "PNG", optimize=False, compress_level=9)
    return out.getvalue()


def _encode(fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(out, fmt, **kw)
    return out.getvalue()


def eps() -> bytes:
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n%%EndComments\n"
            b"newpath 0 0 moveto 32 32 lineto stroke\nshowpage\n%%EOF\n")


def fits() -> bytes:
    cards = [b"SIMPLE  =                    T", b"BITPIX  =                    8", b"NAXIS   =                    2",
             b"NAXIS1  =                   32", b"NAXIS2  =                   32", b"END"]
    header = b"".join(c.ljust(80) for c in cards).ljust(2880)
    return header + bytes(32 * 32).ljust(2880, b"\x00")


def psd() -> bytes:
    # signature, version 1, 6 reserved, 3 channels, 32x32, depth 8, RGB; empty sections; raw data
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 32, 32, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(3 * 32 * 32)


def svg() -> bytes:
    return (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32">'
            b'<rect width="32" height="32" fill="red"/></svg>')


def hostile_cases(jpeg: bytes, big_bytes: int = 50 * MB) -> list[tuple[str, bytes, str, int, str]]:
    """(name, body, declared content type, expected REST status, expected gRPC code name) for each
    hostile upload. `jpeg` is a real photo."""
    return [
        ("not_an_image", b"hello, this is plain text and not a picture\n" * 20, "image/jpeg", 400,
         "INVALID_ARGUMENT"),
        ("truncated_jpeg", jpeg[: len(jpeg) // 2], "image/jpeg", 400, "INVALID_ARGUMENT"),
        ("jpeg_header_only", jpeg[:200], "image/jpeg", 400, "INVALID_ARGUMENT"),
        ("zero_bytes", b"", "image/jpeg", 400, "INVALID_ARGUMENT"),
        ("png_100k_x_100k", png_bomb_header(), "image/png", 400, "INVALID_ARGUMENT"),
        ("upload_50mb", b"\xff\xd8\xff\xe0" + bytes(big_bytes - 4), "image/jpeg", 413, "RESOURCE_EXHAUSTED"),
        ("eps", eps(), "application/postscript", 415, "INVALID_ARGUMENT"),
        ("eps_as_image", eps(), "image/x-eps", 415, "INVALID_ARGUMENT"),
        ("psd", psd(), "image/vnd.adobe.photoshop", 415, "INVALID_ARGUMENT"),
        ("fits", fits(), "image/fits", 415, "INVALID_ARGUMENT"),
        ("tiff", _encode("TIFF"), "image/tiff", 415, "INVALID_ARGUMENT"),
        ("svg", svg(), "image/svg+xml", 415, "INVALID_ARGUMENT"),
        ("jpeg_as_text_plain", jpeg, "text/plain", 415, "OK"),
        ("jpeg_as_html", jpeg, "text/html", 415, "OK"),
    ]
