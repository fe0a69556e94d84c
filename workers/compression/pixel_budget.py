"""The decoded size of an image dataset, counted from its headers before any image is decoded.

Each image's own pixel cap (`ArchiveLimits.max_image_pixels`) does not bound the whole: a 1-bit
4096x4096 PNG is ~2 KB, so a 569 KB archive of 256 of them declares 4.3 G pixels, which the loader then
tries to decode epoch after epoch. Two bounds, both on the index's (width, height) counts:
- the total pixels of the dataset (`max_pixels`; ImageNet-1k's train split is ~1.4e11);
- the amplification, pixels per stored byte (`max_pixels_per_byte`): photographs decode to a few dozen
  pixels per byte of JPEG, flat synthetic PNGs to a few hundred; a crafted PNG to thousands.
The upload sandbox, the dataset check and the worker's loader all call `check_pixels` on the index.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from workers.compression.errors import InvalidDataset

__all__ = ["DEFAULT_PIXEL_BUDGET", "PixelBudget", "check_pixels", "total_pixels"]


@dataclass(frozen=True)
class PixelBudget:
    """Bounds on what an image dataset's headers may declare, summed over the whole dataset."""

    max_pixels: int = 1 << 38  # ~2.7e11 pixels: ImageNet-1k's train split fits twice
    max_pixels_per_byte: int = 1024  # decoded pixels per byte of the stored dataset file


DEFAULT_PIXEL_BUDGET = PixelBudget()


def total_pixels(sizes: Counter[tuple[int, int]]) -> int:
    """Returns the pixels of every image an index counted ((width, height) -> images)."""
    return sum(width * height * count for (width, height), count in sizes.items())


def check_pixels(sizes: Counter[tuple[int, int]], stored_bytes: int,
                 budget: PixelBudget = DEFAULT_PIXEL_BUDGET) -> int:
    """Refuses a dataset whose headers declare more pixels than the budget allows; returns its pixels."""
    pixels = total_pixels(sizes)
    if pixels > budget.max_pixels:
        raise InvalidDataset(f"the dataset's images declare {pixels:.3g} pixels in all; the limit is "
                             f"{budget.max_pixels:.3g}")
    if pixels > budget.max_pixels_per_byte * max(stored_bytes, 1):
        raise InvalidDataset(f"the dataset's images declare {pixels:.3g} pixels from {stored_bytes} stored "
                             f"bytes ({pixels / max(stored_bytes, 1):.0f} per byte; the limit is "
                             f"{budget.max_pixels_per_byte}): images that decode this much larger than they "
                             "are stored are refused as decompression bombs")
    return pixels
