"""What an image dataset holds, learned once from image headers: which sample is where, its label, its split.

Image folders and Parquet files both end here, so the split rule (a seeded stratified split when the data
has no validation split), the unreadable-image rule (skipped, counted; more than 1% refuses the dataset)
and the facts the dataset check reports are one piece of code. Nothing here holds pixels: an entry is an
integer key into its `ImageSource` (an archive member, a Parquet row), so memory grows by a few bytes per
image, never by the image.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from workers.compression.errors import InvalidDataset
from workers.compression.images import ImageFacts

__all__ = ["MAX_UNREADABLE", "VAL_FRACTION", "ImageIndex", "ImageSource", "IndexBuilder", "index_dataset"]

MAX_UNREADABLE = 0.01  # the share of unreadable images a dataset may have; more is refused
VAL_FRACTION = 0.1  # of each class, held out when the data brings no validation split
_SHOWN = 5  # unreadable names quoted in a refusal

Split = Literal["train", "val"]


class ImageSource(Protocol):
    """Random access to a dataset's stored images by key; picklable (a DataLoader worker opens its own)."""

    def read(self, key: int) -> bytes:
        """Returns the stored (encoded) bytes of image `key`."""

    def name(self, key: int) -> str:
        """Returns a human name for image `key` (member path, or file and row), for messages."""


@dataclass(frozen=True)
class ImageIndex:
    """A dataset's samples by split (keys into `source`, labels), its classes and what the headers said."""

    format: str
    source: ImageSource
    classes: list[str]
    train: tuple[np.ndarray, np.ndarray]  # (keys, labels), int64
    val: tuple[np.ndarray, np.ndarray]
    split: dict[str, Any]  # {"val_from": "val/" | "validation" | "split", "seed", "fraction"}
    unreadable: list[str]
    sizes: Counter[tuple[int, int]]  # (width, height) -> images
    gray: bool  # every image is grayscale: fed as one channel unless the model wants three
    duplicates: int  # validation images whose sampled hash also occurs in train

    @property
    def one_size(self) -> tuple[int, int] | None:
        """Returns the (width, height) every image shares, or None when sizes differ."""
        return next(iter(self.sizes)) if len(self.sizes) == 1 else None


def _per_split() -> dict[Split | None, list[Any]]:
    """Returns one empty list per split, and one for images the data assigns to no split."""
    return {"train": [], "val": [], None: []}


@dataclass
class IndexBuilder:
    """Collects images one header at a time, then settles the classes, the split and the refusals."""

    format: str
    source: ImageSource
    max_unreadable: float = MAX_UNREADABLE
    _keys: dict[Split | None, list[int]] = field(default_factory=lambda: _per_split())
    _classes: dict[Split | None, list[str]] = field(default_factory=lambda: _per_split())
    _digests: dict[Split | None, list[int]] = field(default_factory=lambda: _per_split())
    _labels: dict[str, str] = field(default_factory=dict)  # one string per class, shared by its images
    _unreadable: list[str] = field(default_factory=list)
    _sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    _gray: bool = True

    def add(self, split: Split | None, label: str, key: int, facts: ImageFacts) -> None:
        """Records one readable image; `split` None means the data names no split for it."""
        self._keys[split].append(key)
        self._classes[split].append(self._labels.setdefault(label, label))
        self._digests[split].append(facts.digest)
        self._sizes[(facts.width, facts.height)] += 1
        self._gray = self._gray and facts.gray

    def skip(self, name: str) -> None:
        """Records an image that cannot be read."""
        self._unreadable.append(name)

    def finish(self, *, seed: int, class_names: list[str] | None = None) -> ImageIndex:
        """Returns the index: labels by sorted class name (or `class_names`), val split off if absent."""
        total = sum(len(k) for k in self._keys.values()) + len(self._unreadable)
        if len(self._unreadable) > self.max_unreadable * total:
            shown = ", ".join(self._unreadable[:_SHOWN])
            raise InvalidDataset(f"{len(self._unreadable)} of {total} images are unreadable (more than "
                                 f"{self.max_unreadable:.0%}), e.g. {shown}")
        pooled = self._keys[None] + self._keys["train"]
        if not pooled:
            raise InvalidDataset("the dataset has no readable training images")
        classes = class_names or sorted(set(self._classes[None] + self._classes["train"]))
        index = {name: i for i, name in enumerate(classes)}
        unknown = sorted(set(self._classes["val"]) - set(index))
        if unknown:
            raise InvalidDataset(f"val has classes with no training images: {unknown[:_SHOWN]}")
        train_keys = np.array(pooled, dtype=np.int64)
        train_labels = np.array([index[c] for c in self._classes[None] + self._classes["train"]], np.int64)
        digests = self._digests[None] + self._digests["train"]
        if self._keys["val"]:
            val_keys = np.array(self._keys["val"], dtype=np.int64)
            val_labels = np.array([index[c] for c in self._classes["val"]], dtype=np.int64)
            held = np.zeros(len(train_keys), dtype=bool)
            split: dict[str, Any] = {"val_from": "the data's own validation split"}
        else:
            held = _stratified(train_labels, seed)
            val_keys, val_labels = train_keys[held], train_labels[held]
            split = {"val_from": "split", "seed": seed, "fraction": VAL_FRACTION}
            if not held.any():
                raise InvalidDataset("the dataset has no validation split and too few images to hold one out "
                                     "(a class needs at least 2 images)")
        train_digests = {d for d, h in zip(digests, held, strict=True) if not h}
        val_digests = self._digests["val"] or [d for d, h in zip(digests, held, strict=True) if h]
        return ImageIndex(
            format=self.format, source=self.source, classes=classes,
            train=(train_keys[~held], train_labels[~held]), val=(val_keys, val_labels),
            split={**split, "train": int((~held).sum()), "val": len(val_keys)},
            unreadable=list(self._unreadable), sizes=self._sizes, gray=self._gray,
            duplicates=sum(d in train_digests for d in val_digests),
        )


def _stratified(labels: np.ndarray, seed: int) -> np.ndarray:
    """Returns a seeded mask holding out VAL_FRACTION of each class (at least one of 2 or more)."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        take = max(1, round(len(members) * VAL_FRACTION))
        held[rng.permutation(members)[:take]] = True
    return held


def index_dataset(path: Path, kind: str, *, seed: int, cache: bool = True) -> ImageIndex:
    """Indexes an image-folder archive or a Parquet dataset by headers; `cache=False` writes nothing (the
    sandboxed check) but then only indexes: a tar.gz or archived Parquet cannot be read back from it."""
    if kind.startswith("parquet"):
        from workers.compression.parquet_data import index_parquet

        return index_parquet(path, kind, seed=seed, cache=cache)
    from workers.compression.image_folders import index_image_folder

    return index_image_folder(path, kind, seed=seed, cache=cache)  # type: ignore[arg-type]  # sniffed
