"""Safe decoding of untrusted image uploads (shared by the gateway and the embedder).

Every service that turns user bytes into pixels goes through `decode_image`, so the
rules (allowed formats, pixel limit, how alpha/palette/greyscale become RGB, EXIF
orientation) are the same everywhere and the embeddings of an image do not depend on
which service decoded it.

    >>> img = decode_image(data)            # PIL.Image.Image, mode "RGB", pixels loaded
    ... except ImageRejected as exc:        # a ValueError
    ...     exc.reason                      # one of REASONS, e.g. "not_an_image"

Rules:
  * formats: JPEG, PNG, WEBP, GIF (first frame), BMP -- detected from the magic bytes,
    never from a file name or a client-supplied content type;
  * at most `max_pixels` pixels (default 40 MP), checked from the header *before* the
    pixel data is decoded (decompression bombs are rejected cheaply);
  * the whole image must decode (truncated files are rejected, never padded with grey);
  * EXIF orientation is applied (phone photos come out upright);
  * transparency is composited onto white; palette, greyscale, CMYK, 16-bit and float
    modes are converted to 8-bit RGB.
"""
from __future__ import annotations

import io
import os
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Formats accepted by `decode_image` (PIL format names).
ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})

#: Default pixel limit (width * height): 40 megapixels.
DEFAULT_MAX_PIXELS = 40_000_000

#: Machine-readable reasons carried by `ImageRejected.reason`.
REASONS = (
    "empty",               # zero bytes
    "too_large",           # more bytes than max_bytes
    "not_an_image",        # bytes are not a recognised image
    "unsupported_format",  # a recognised image format outside ALLOWED_FORMATS
    "too_many_pixels",     # width * height above max_pixels (decompression bomb guard)
    "truncated",           # the file ends before the image data does
    "corrupt",             # the image data cannot be decoded
)

#: Background used where an image is transparent.
BACKGROUND_RGB = (255, 255, 255)


class ImageRejected(ValueError):
    """Raised by `decode_image` for bytes that are not an acceptable image.

    `reason` is one of `REASONS`; `str(exc)` is a human-readable message safe to show a client
    (it never contains the image bytes).
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self):  # picklable across process pools
        return (type(self), (self.reason, self.message))


def sniff_format(data: bytes) -> str | None:
    """PIL-style format name guessed from the first bytes, or None when unrecognised.

    Recognises the allowed formats plus a few common ones that are rejected as
    `unsupported_format` (TIFF, ICO, HEIC/HEIF, AVIF, JPEG 2000, PSD, PDF, EPS, FITS, SVG).
    """
    head = bytes(data[:64])
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    bmp_header_sizes = (12, 40, 52, 56, 64, 108, 124)
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in bmp_header_sizes:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis"):
            return "HEIF"
        return None
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG2000"
    if head[:4] == b"8BPS":
        return "PSD"
    if head[:5] == b"%PDF-":
        return "PDF"
    if head[:4] == b"%!PS" or head[:4] == b"\xc5\xd0\xd3\xc6":  # PostScript / EPS (plain or DOS binary)
        return "EPS"
    if head[:9] == b"SIMPLE  =":  # FITS primary header card
        return "FITS"
    stripped = head.lstrip()
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in bytes(data[:1024])):
        return "SVG"
    return None


def to_rgb(img: Image.Image) -> Image.Image:
    """Converts any PIL mode to 8-bit RGB; transparency is composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        if img.mode.startswith("I;16"):
            arr = arr / 257.0
        elif img.mode == "I" and arr.size and arr.max() > 255:
            arr = arr / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB", "1") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND_RGB + (255,))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return img.convert("RGB")


def check_size(data, max_bytes: int | None = None) -> None:
    """The one empty / oversized rule for an uploaded image, a check that needs no look inside: ImageRejected
    "empty", or "too_large" above `max_bytes` (None: no limit). `decode_image` and `probe_image` start with it;
    the gateway runs it first (lookalike_gateway.validation.check_size), before hashing a huge body."""
    if data is None or len(data) == 0:
        raise ImageRejected("empty", "image is empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageRejected("too_large", f"image is {len(data)} bytes, above the limit of {max_bytes}")


def _open_checked(data, max_pixels: int, max_bytes: int | None, allowed_formats) -> tuple[str, Image.Image]:
    """Every check that needs no pixel data (size of the upload, format by magic bytes, allow-list,
    readable header, dimensions, pixel limit), then the opened but not yet decoded image and its
    format. The caller closes the image."""
    check_size(data, max_bytes)
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected("not_an_image", "the upload is not a recognised image "
                            f"(accepted: {', '.join(sorted(allowed_formats))})")
    if fmt not in allowed_formats:
        raise ImageRejected("unsupported_format", f"{fmt} images are not accepted "
                            f"(accepted: {', '.join(sorted(allowed_formats))})")
    with warnings.catch_warnings():
        # We enforce our own (lower) pixel limit; PIL's warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(bytes(data)), formats=[fmt])
        except Image.DecompressionBombError as exc:
            raise ImageRejected("too_many_pixels", f"the image is too large: {exc}") from None
        except UnidentifiedImageError:
            raise ImageRejected("not_an_image", f"the upload starts like {fmt} but its header cannot be "
                                "read (damaged or truncated file)") from None
        except (SyntaxError, ValueError, OSError, EOFError, struct.error) as exc:
            raise ImageRejected("not_an_image", f"the upload starts like {fmt} but cannot be read: "
                                f"{_short(exc)}") from None
    width, height = img.size
    problem = None
    if width <= 0 or height <= 0:
        problem = ImageRejected("corrupt", f"the image has an invalid size {width}x{height}")
    elif width * height > max_pixels:
        problem = ImageRejected("too_many_pixels", f"the image is {width}x{height} = {width * height} "
                                f"pixels, the limit is {max_pixels}")
    if problem is not None:
        img.close()
        raise problem
    return fmt, img


def decode_image(
    data: bytes | bytearray | memoryview,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    max_bytes: int | None = None,
    allowed_formats: frozenset[str] | set[str] = ALLOWED_FORMATS,
    apply_exif_orientation: bool = True,
    min_short_side: int | None = None,
) -> Image.Image:
    """Decodes untrusted bytes into a loaded RGB `PIL.Image.Image`.

    `min_short_side`: a JPEG may be decoded at a reduced scale (libjpeg's 1/2, 1/4, 1/8: `Image.draft`,
    several times faster for large photos) as long as its short side stays >= this many pixels; the
    caller resizes further anyway. None (default): full size.

    Raises `ImageRejected` (a ValueError) with `.reason` in `REASONS`.
    """
    fmt, src = _open_checked(data, max_pixels, max_bytes, allowed_formats)
    img = src
    try:
        if min_short_side and fmt == "JPEG":
            width, height = src.size
            if min(width, height) >= 2 * min_short_side:
                scale = min_short_side / min(width, height)
                src.draft(src.mode, (int(width * scale + 0.999), int(height * scale + 0.999)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animated GIF/WEBP: first frame only
            try:
                img.load()
            except Image.DecompressionBombError as exc:
                raise ImageRejected("too_many_pixels", f"the image is too large: {exc}") from None
            except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
                text = str(exc).lower()
                if "truncated" in text or "broken data stream" in text or isinstance(exc, EOFError) \
                        or "premature end" in text or "unexpected end" in text:
                    raise ImageRejected("truncated", f"the {fmt} file is truncated: {_short(exc)}") from None
                raise ImageRejected("corrupt", f"the {fmt} data cannot be decoded: {_short(exc)}") from None
        if apply_exif_orientation:
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # a broken EXIF block must not reject an otherwise fine image
                pass
        rgb = to_rgb(img)
        if rgb is src:
            rgb = src.copy()  # detach from the file object
        return rgb
    finally:
        src.close()


def probe_image(
    data: bytes | bytearray | memoryview,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    max_bytes: int | None = None,
    allowed_formats: frozenset[str] | set[str] = ALLOWED_FORMATS,
) -> tuple[str, int, int]:
    """(format, width, height) of untrusted bytes from the header alone, by the rules of `decode_image`
    except that the pixel data is not decoded (so a truncated or corrupt body is not detected here).

    For a service that hands the bytes on to one that decodes them with `decode_image` anyway (the
    gateway, before the embedder): refuses non-images, other formats and decompression bombs for a
    fraction of a millisecond. Raises `ImageRejected`.
    """
    fmt, img = _open_checked(data, max_pixels, max_bytes, allowed_formats)
    img.close()
    return fmt, *img.size


def decode_image_file(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, **kwargs) -> Image.Image:
    """`decode_image` for a file on disk (same rules)."""
    with open(path, "rb") as f:
        return decode_image(f.read(), max_pixels, **kwargs)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = [
    "ALLOWED_FORMATS", "DEFAULT_MAX_PIXELS", "REASONS", "BACKGROUND_RGB", "ImageRejected",
    "sniff_format", "to_rgb", "decode_image", "decode_image_file",
]
