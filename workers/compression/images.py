"""One untrusted image: its header probed (size, mode, orientation) and its pixels decoded as the model sees
them (EXIF orientation applied; palette, RGBA, 16-bit and CMYK converted), under the pixel limit.

A file Pillow cannot read is `Unreadable` (the dataset skips and counts it); one that declares more pixels
than the limit is refused outright as a decompression bomb.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, ImageOps, UnidentifiedImageError

from workers.compression.errors import InvalidDataset

__all__ = ["FORMATS", "IMAGE_SUFFIXES", "ImageFacts", "Unreadable", "decode", "probe"]

FORMATS = ["PNG", "JPEG", "WEBP"]  # what Pillow may try; nothing else is ever parsed
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
_GRAY_MODES = frozenset({"1", "L", "I;16", "I;16B", "I;16L", "I"})
_ROTATED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112
_HASHED_HEAD, _HASHED_TAIL = 16 * 1024, 8 * 1024  # bytes of an image hashed to find duplicates (and its size)


class Unreadable(Exception):
    """An image that cannot be decoded (truncated, corrupt, not an image): skipped and counted."""


@dataclass(frozen=True)
class ImageFacts:
    """What an image header says: its displayed size (after EXIF rotation), whether it is gray, a hash."""

    width: int
    height: int
    gray: bool
    digest: int  # of the first 16 KiB, the last 8 KiB read and the length: equal files share it (sampled)


def probe(name: str, data: bytes, size: int, max_pixels: int) -> ImageFacts:
    """Reads one image's header from `data` (its first bytes suffice); raises Unreadable or InvalidDataset."""
    with _open(name, data, max_pixels) as image:
        width, height = image.size
        try:
            rotated = image.getexif().get(_EXIF_ORIENTATION) in _ROTATED
        except (OSError, SyntaxError, ValueError, TypeError):  # a broken EXIF block: shown unrotated
            rotated = False
        gray = image.mode in _GRAY_MODES
    if rotated:
        width, height = height, width
    # 8 bytes as an int: a few dozen bytes per image in the index, where a hex string took twice that.
    # A sample, not the whole file: hashing every byte cost a fifth of the dataset check's time.
    sample = data if len(data) <= _HASHED_HEAD + _HASHED_TAIL else data[:_HASHED_HEAD] + data[-_HASHED_TAIL:]
    hashed = hashlib.blake2b(sample + size.to_bytes(8, "little"), digest_size=8)
    digest = int.from_bytes(hashed.digest())
    return ImageFacts(width, height, gray, digest)


def decode(name: str, data: bytes, mode: str, max_pixels: int) -> Image.Image:
    """Decodes one image upright (EXIF orientation) in `mode` ("RGB" or "L"); raises Unreadable."""
    with _open(name, data, max_pixels) as image:
        try:
            upright = ImageOps.exif_transpose(image)
            if upright.mode == "P":  # via RGBA, or Pillow warns on palette transparency (alpha dropped)
                upright = upright.convert("RGBA")
            return upright.convert(mode)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise Unreadable(f"cannot be decoded ({exc})") from None


def _open(name: str, data: bytes, max_pixels: int) -> Image.Image:
    """Opens an image lazily after checking its declared size against `max_pixels`."""
    try:
        image = Image.open(BytesIO(data), formats=FORMATS)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise Unreadable(f"is not a readable PNG/JPEG/WebP ({exc})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidDataset(f"{name} declares more than {max_pixels} pixels") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise InvalidDataset(f"{name} declares {width}x{height} pixels; the limit is {max_pixels} per image")
    return image
