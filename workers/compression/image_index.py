"""What an image dataset holds, learned once from image headers: which sample is where, its label, its split.

Image folders and Parquet files both end here, so the split rule (a seeded stratified split when the data
has no validation split), the unreadable-image rule (skipped, counted; more than 1% refuses the dataset)
and the facts the dataset check reports are one piece of code. Nothing here holds pixels: an entry is an
integer key into its `ImageSource` (an archive member, a Parquet row), so memory grows by a few bytes per
image, never by the image.
"""

from __future__ import annotations

from array import array
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


def _packed(code: str) -> dict[Split | None, array[int]]:
    """Returns one empty packed array per split, and one for images the data assigns to no split."""
    return {"train": array(code), "val": array(code), None: array(code)}


@dataclass
class IndexBuilder:
    """Collects images one header at a time, then settles the classes, the split and the refusals.

    Per image it keeps 20 packed bytes (key, label number, sampled hash), never a Python object."""

    format: str
    source: ImageSource
    max_unreadable: float = MAX_UNREADABLE
    _keys: dict[Split | None, array[int]] = field(default_factory=lambda: _packed("q"))
    _labels: dict[Split | None, array[int]] = field(default_factory=lambda: _packed("i"))
    _digests: dict[Split | None, array[int]] = field(default_factory=lambda: _packed("Q"))
    _label_ids: dict[str, int] = field(default_factory=dict)  # class name -> its number here
    _unreadable: list[str] = field(default_factory=list)
    _sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    _gray: bool = True

    def add(self, split: Split | None, label: str, key: int, facts: ImageFacts) -> None:
        """Records one readable image; `split` None means the data names no split for it."""
        self._keys[split].append(key)
        self._labels[split].append(self._label_ids.setdefault(label, len(self._label_ids)))
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
        pooled = _numpy(self._keys[None] + self._keys["train"])
        if not len(pooled):
            raise InvalidDataset("the dataset has no readable training images")
        names = list(self._label_ids)  # by number
        train_ids = _numpy(self._labels[None] + self._labels["train"])
        classes = class_names or sorted({names[i] for i in np.unique(train_ids)})
        position = {name: i for i, name in enumerate(classes)}
        relabel = np.array([position.get(name, -1) for name in names], dtype=np.int64)
        val_ids = _numpy(self._labels["val"])
        unknown = sorted({names[i] for i in np.unique(val_ids) if relabel[i] < 0})
        if unknown:
            raise InvalidDataset(f"val has classes with no training images: {unknown[:_SHOWN]}")
        train_labels = relabel[train_ids]
        digests = _numpy(self._digests[None] + self._digests["train"])
        if len(val_ids):
            val_keys, val_labels = _numpy(self._keys["val"]), relabel[val_ids]
            val_digests = _numpy(self._digests["val"])
            held = np.zeros(len(pooled), dtype=bool)
            split: dict[str, Any] = {"val_from": "the data's own validation split"}
        else:
            held = _stratified(train_labels, seed)
            val_keys, val_labels, val_digests = pooled[held], train_labels[held], digests[held]
            split = {"val_from": "split", "seed": seed, "fraction": VAL_FRACTION}
            if not held.any():
                raise InvalidDataset("the dataset has no validation split and too few images to hold one out "
                                     "(a class needs at least 2 images)")
        return ImageIndex(
            format=self.format, source=self.source, classes=classes,
            train=(pooled[~held], train_labels[~held]), val=(val_keys, val_labels),
            split={**split, "train": int((~held).sum()), "val": len(val_keys)},
            unreadable=list(self._unreadable), sizes=self._sizes, gray=self._gray,
            duplicates=int(np.isin(val_digests, digests[~held]).sum()),
        )


def _numpy(packed: array[int]) -> np.ndarray:
    """Returns a copy of a packed array as numpy (the same item type)."""
    if not len(packed):
        return np.zeros(0, dtype=packed.typecode)
    return np.array(np.frombuffer(packed, dtype=packed.typecode))


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
