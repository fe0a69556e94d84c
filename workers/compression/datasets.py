"""Datasets for training and evaluation: `.npz`, image folders and Parquet, normalized, optionally augmented.

Every consumer (trainer, verification, measurement) reads a `DatasetBundle`: sample shape, classes, sample
counts and `batches(...)`. Two kinds exist:
- `ArrayBundle`: samples in memory in their stored dtype (uint8 images cost a quarter of float32); each
  batch is scaled, normalized and, for training images, augmented on the fly with index tensors (CIFAR's
  pad-4 random crop + flip). `.npz` files, and image datasets of small same-size images (sides of at most
  IN_MEMORY_SIDE px, decoded within IN_MEMORY_BYTES: CIFAR- and MNIST-like), which keep their benchmarks'
  meaning;
- `streaming.StreamingBundle`: every other image dataset, decoded per batch from the stored file with the
  model's own transforms (random-resized crop + flip to train, resize + center crop to evaluate).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from workers.compression import npz
from workers.compression.config import DataOptions
from workers.compression.errors import InvalidDataset
from workers.compression.pixel_budget import check_pixels
from workers.compression.preprocessing import Preprocessing, resize_center_crop

__all__ = ["IN_MEMORY_BYTES", "IN_MEMORY_SIDE", "MAX_NPZ_BYTES", "PAD", "ArrayBundle", "DatasetBundle",
           "from_arrays", "load_dataset", "no_single_sample"]

Norm = tuple[tuple[float, ...], tuple[float, ...]]

PAD = 4  # pixels of zero padding before the random crop (the CIFAR convention)
MAX_NPZ_BYTES = npz.DEFAULT_NPZ_LIMITS.max_total_bytes  # uncompressed bytes an .npz may hold
IN_MEMORY_SIDE = 64  # same-size images up to this side are decoded once and kept in memory
IN_MEMORY_BYTES = 1 << 30  # ... when all of them decode within this many bytes
STATS_CHUNK_BYTES = 64 << 20  # float32 bytes of samples converted at a time for the train statistics


@dataclass(kw_only=True)
class DatasetBundle(ABC):
    """Train and validation splits with the normalization every batch gets: what every consumer reads."""

    num_classes: int
    mean: tuple[float, ...]  # per channel, applied after `scale`
    std: tuple[float, ...]
    scale: float  # 1/255 for uint8 images, 1.0 for float data
    augment: bool  # random augmentation of image training batches
    class_names: list[str] | None = None  # label i's name, where the dataset names its classes
    facts: dict[str, Any] = field(default_factory=dict)  # format, split, skipped images: for the report

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Returns one sample's shape, e.g. (3, 32, 32)."""

    @property
    @abstractmethod
    def train_samples(self) -> int:
        """Returns the number of training samples."""

    @property
    @abstractmethod
    def val_samples(self) -> int:
        """Returns the number of validation samples."""

    @abstractmethod
    def batches(
        self,
        split: Literal["train", "val"],
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields normalized (x, y) batches on `device`; train batches are augmented when `augment`.

        Every sample is yielded once per pass; the last batch may be smaller than `batch_size`.
        """


@dataclass(kw_only=True)
class ArrayBundle(DatasetBundle):
    """Train and validation splits held in memory; training images get CIFAR's pad-4 crop + flip."""

    x_train: torch.Tensor  # (N, C, H, W) uint8 or float32, or (N, F) for flat data; not yet normalized
    y_train: torch.Tensor  # (N,) int64
    x_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Returns one sample's shape, e.g. (3, 32, 32)."""
        return tuple(self.x_train.shape[1:])

    @property
    def train_samples(self) -> int:
        """Returns the number of training samples."""
        return int(self.x_train.shape[0])

    @property
    def val_samples(self) -> int:
        """Returns the number of validation samples."""
        return int(self.x_val.shape[0])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Returns `x` as normalized float32: (x * scale - mean) / std per channel."""
        # mean/std broadcast over (B, C, H, W) as (1, C, 1, 1) and over (B, F) as (1, F) or (1, 1).
        shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape)
        return (x.to(torch.float32) * self.scale - mean) / std

    def batches(
        self,
        split: Literal["train", "val"],
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields normalized (x, y) batches on `device`; train batches get pad-4 crop + flip if `augment`."""
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_val, self.y_val)
        n = x.shape[0]
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        augment = split == "train" and self.augment and x.dim() == 4
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            xb = x[idx]
            if augment:
                xb = random_crop_flip(xb, generator)
            yield self.normalize(xb.to(device)), y[idx].to(device)


def no_single_sample(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields the same number of batches with the same samples, but a batch of one sample (the last of a
    split of k * batch_size + 1) takes a sample from the batch before it: BatchNorm in training mode
    cannot normalize a single sample (one value per channel) and would fail the job."""
    held: tuple[torch.Tensor, torch.Tensor] | None = None
    for x, y in batches:
        if held is not None and x.shape[0] == 1 and held[0].shape[0] > 2:
            (hx, hy), held = held, None
            yield hx[:-1], hy[:-1]
            x, y = torch.cat([hx[-1:], x]), torch.cat([hy[-1:], y])
        if held is not None:
            yield held
        held = (x, y)
    if held is not None:
        yield held


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Returns a random `PAD`-px zero-padded crop of each image, half of them flipped left-right."""
    b, _, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))  # (B, C, H+2P, W+2P); zero = black before normalization
    dy = torch.randint(0, 2 * PAD + 1, (b, 1), generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (b, 1), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = dy + torch.arange(h)  # (B, H)
    cols = dx + torch.arange(w)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # reading columns backwards flips the image
    # Advanced indexing on dims 0, 2, 3 puts them first: (B, H, W, C), hence the permute back.
    out = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def from_arrays(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
    options: DataOptions, *, default_norm: Norm | None = None, preprocessing: Preprocessing | None = None,
) -> ArrayBundle:
    """Validates arrays (NCHW or NHWC, uint8 or float) and builds a bundle; mean/std from options, else the
    model's `preprocessing`, else `default_norm` (an architecture's training convention), else computed on
    the train split. Images are fitted to the model's channels and image size (resize + center crop)."""
    xt, xv = _samples(x_train, "x_train"), _samples(x_val, "x_val")
    if xt.shape[1:] != xv.shape[1:]:
        raise InvalidDataset(f"x_train samples have shape {tuple(xt.shape[1:])} but x_val samples "
                             f"{tuple(xv.shape[1:])}; both splits must share one sample shape")
    if preprocessing is not None:
        xt, xv = _fit_images(xt, preprocessing), _fit_images(xv, preprocessing)
        default_norm = preprocessing.norm or default_norm
    yt, yv = _labels(y_train, "y_train", len(xt)), _labels(y_val, "y_val", len(xv))
    num_classes = npz.num_classes(yt.numpy(), yv.numpy())
    default_scale = 1.0 / 255.0 if xt.dtype == torch.uint8 else 1.0
    scale = options.scale if options.scale is not None else default_scale
    channels = xt.shape[1] if xt.dim() == 4 else 1
    if options.mean is not None and options.std is not None:
        norm: Norm = (tuple(options.mean), tuple(options.std))
        source = "data.mean/data.std"
    elif default_norm is not None:
        norm, source = default_norm, "the architecture's default normalization"
    else:
        norm, source = _train_stats(xt, scale), ""
    if source and len(norm[0]) not in (1, channels):
        raise InvalidDataset(f"{source} has {len(norm[0])} values but the images have {channels} channel(s)")
    return ArrayBundle(x_train=xt, y_train=yt, x_val=xv, y_val=yv, num_classes=num_classes,
                         mean=norm[0], std=norm[1], scale=scale, augment=options.augment)


def _samples(x: np.ndarray, name: str) -> torch.Tensor:
    """Checks one split's samples and returns them as (N, C, H, W) or (N, F), uint8 or float32."""
    shape = (x.shape[0], *npz.check_samples(name, x.shape, x.dtype))
    if x.ndim == 4 and shape[1:] != x.shape[1:]:  # channels last
        x = x.transpose(0, 3, 1, 2)
    x = x.reshape(shape)  # (N, H, W) gains its channel axis
    if x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise InvalidDataset(f"{name} contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(x))


def _fit_images(x: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Repeats grayscale to the model's channels and resizes + center-crops to its image size (once, at load:
    the samples stay in memory at the size the model is fed)."""
    if x.dim() != 4:
        return x
    channels = preprocessing.channels
    if channels is not None and x.shape[1] != channels:
        if x.shape[1] != 1:
            raise InvalidDataset(f"the images have {x.shape[1]} channels but the model takes {channels}")
        x = x.expand(-1, channels, -1, -1)  # grayscale shown to an RGB model as three equal channels
    size = preprocessing.image_size
    if size is not None and tuple(x.shape[2:]) != (size, size):
        x = resize_center_crop(x, size, preprocessing.crop_pct, preprocessing.interpolation)
    return x.contiguous()


def _labels(y: np.ndarray, name: str, n: int) -> torch.Tensor:
    """Checks one split's labels (integers in [0, classes), one per sample) and returns them as int64."""
    return torch.from_numpy(npz.check_labels(y, name, n))


def _train_stats(x: torch.Tensor, scale: float) -> Norm:
    """Returns per-channel (or, for flat data, global) mean and std of the scaled train split, streamed:
    float32 copies of one bounded chunk at a time, each chunk's sums added up in float64."""
    dims = (0, 2, 3) if x.dim() == 4 else (0, 1)
    total = torch.zeros(x.shape[1] if x.dim() == 4 else 1, dtype=torch.float64)
    squares = torch.zeros_like(total)
    rows = max(1, STATS_CHUNK_BYTES // max(1, 4 * x[0].numel()))
    for chunk in torch.split(x, rows):
        c = chunk.to(torch.float32) * scale
        total += c.sum(dims).double()
        squares += (c * c).sum(dims).double()
    count = x.numel() / total.numel()
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant channel must not divide by 0
    return tuple(mean.tolist()), tuple(std.tolist())


def load_dataset(path: Path, options: DataOptions, *, default_norm: Norm | None = None,
                 preprocessing: Preprocessing | None = None, seed: int = 0) -> DatasetBundle:
    """Loads `.npz`, an image-folder archive (`.zip`, `.tar`, `.tar.gz`) or Parquet safely; `seed` splits off
    the validation images of data that has none. Raises InvalidDataset."""
    from workers.compression.sniff import sniff_dataset_file

    kind = sniff_dataset_file(path)
    if kind == "npz":
        bundle = from_arrays(*_read_npz(path), options, default_norm=default_norm,
                             preprocessing=preprocessing)
        bundle.facts = {"format": "npz", "split": {"val_from": "x_val/y_val", "train": bundle.train_samples,
                                                   "val": bundle.val_samples}, "unreadable": []}
        return bundle
    from workers.compression.image_data import from_index
    from workers.compression.image_index import index_dataset

    index = index_dataset(path, kind, seed=seed)
    check_pixels(index.sizes, path.stat().st_size)  # before any image is decoded
    return from_index(index, options, default_norm=default_norm, preprocessing=preprocessing)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reads the four splits of an `.npz` without pickle, after checking every member's real bytes."""
    _, (x_train, y_train, x_val, y_val) = npz.load_npz(path)
    return x_train, y_train, x_val, y_val
