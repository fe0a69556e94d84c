"""Image datasets (folders in archives, Parquet) from their index to a bundle: in memory, or streamed.

The rule (datasets.py says why): images that all share one size of at most IN_MEMORY_SIDE px and decode
within IN_MEMORY_BYTES are decoded once into an `ArrayBundle` (CIFAR pad-4 crop + flip, resized to the
model's size once); everything else becomes a `StreamingBundle` fed through the model's own transforms.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from workers.compression.archives import DEFAULT_LIMITS
from workers.compression.config import DataOptions
from workers.compression.datasets import IN_MEMORY_BYTES, IN_MEMORY_SIDE, DatasetBundle, Norm, from_arrays
from workers.compression.errors import InvalidDataset
from workers.compression.image_index import ImageIndex
from workers.compression.images import Unreadable, decode
from workers.compression.preprocessing import Preprocessing
from workers.compression.transforms import eval_transform, train_transform

__all__ = ["from_index"]

_STATS_SAMPLES = 256  # train images that give mean/std when neither the model nor the job fixes them


def from_index(index: ImageIndex, options: DataOptions, *, default_norm: Norm | None = None,
               preprocessing: Preprocessing | None = None) -> DatasetBundle:
    """Builds the bundle for an indexed image dataset, fitted to the model's preprocessing."""
    wanted = preprocessing.channels if preprocessing is not None else None
    channels = 1 if wanted == 1 or (wanted is None and index.gray) else 3
    facts: dict[str, Any] = {"format": index.format, "split": index.split,
                             "unreadable": list(index.unreadable)}
    side = index.one_size
    if side is not None and max(side) <= IN_MEMORY_SIDE \
            and sum(index.sizes.values()) * channels * math.prod(side) <= IN_MEMORY_BYTES:
        bundle: DatasetBundle = _in_memory(index, channels, options, default_norm, preprocessing, facts)
    else:
        bundle = _streaming(index, channels, options, default_norm, preprocessing)
        facts["storage"] = "streaming"
    bundle.class_names, bundle.facts = index.classes, bundle.facts | facts
    return bundle


def _in_memory(index: ImageIndex, channels: int, options: DataOptions, default_norm: Norm | None,
               preprocessing: Preprocessing | None, facts: dict[str, Any]) -> DatasetBundle:
    """Decodes every image once into uint8 arrays (skipping bodies that fail) and builds an ArrayBundle."""
    mode, arrays = "L" if channels == 1 else "RGB", list[np.ndarray]()
    skipped: list[str] = []
    for keys, labels in (index.train, index.val):
        images, kept = [], []
        for key, label in zip(keys.tolist(), labels.tolist(), strict=True):
            name = index.source.name(key)
            try:
                image = decode(name, index.source.read(key), mode, DEFAULT_LIMITS.max_image_pixels)
            except Unreadable:
                skipped.append(name)
                continue
            array = np.asarray(image, dtype=np.uint8)
            images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
            kept.append(label)
        arrays += [np.stack(images), np.array(kept, dtype=np.int64)]
    x_train, y_train, x_val, y_val = arrays
    bundle = from_arrays(x_train, y_train, x_val, y_val, options, default_norm=default_norm,
                         preprocessing=preprocessing)
    facts["unreadable"] = [*index.unreadable, *skipped]
    facts["storage"] = "memory"
    return bundle


def _streaming(index: ImageIndex, channels: int, options: DataOptions, default_norm: Norm | None,
               preprocessing: Preprocessing | None) -> DatasetBundle:
    """Builds a StreamingBundle: the model's size (else the data's commonest short side) and transforms."""
    from workers.compression.streaming import StreamingBundle

    (width, height), _ = index.sizes.most_common(1)[0]
    own = preprocessing.image_size if preprocessing is not None else None
    size = own or min(width, height)
    crop_pct = preprocessing.crop_pct if preprocessing is not None else 1.0
    interpolation = preprocessing.interpolation if preprocessing is not None else "bilinear"
    scale = options.scale if options.scale is not None else 1.0 / 255.0
    if options.mean is not None and options.std is not None:
        norm: Norm = (tuple(options.mean), tuple(options.std))
    else:
        norm = (preprocessing.norm if preprocessing is not None else None) or default_norm or _stats(
            index, channels, eval_transform(size, crop_pct, interpolation, None, scale), scale)
    if len(norm[0]) not in (1, channels):
        raise InvalidDataset(f"the normalization has {len(norm[0])} values but the images are fed with "
                             f"{channels} channel(s)")
    return StreamingBundle(
        num_classes=len(index.classes), mean=norm[0], std=norm[1], scale=scale, augment=options.augment,
        index=index, image_size=size, channels=channels, max_pixels=DEFAULT_LIMITS.max_image_pixels,
        train_transform=train_transform(size, interpolation, norm, scale),
        eval_transform=eval_transform(size, crop_pct, interpolation, norm, scale),
    )


def _stats(index: ImageIndex, channels: int, fit: torch.nn.Module, scale: float) -> Norm:
    """Returns per-channel mean and std of up to _STATS_SAMPLES train images as the model sees them."""
    keys = index.train[0][:_STATS_SAMPLES].tolist()
    total = torch.zeros(channels, dtype=torch.float64)
    squares, count = torch.zeros_like(total), 0
    for key in keys:
        try:
            image = decode(index.source.name(key), index.source.read(key), "L" if channels == 1 else "RGB",
                           DEFAULT_LIMITS.max_image_pixels)
        except Unreadable:
            continue
        x = fit(image).to(torch.float32) * scale  # (C, H, W): float32, summed into float64 totals
        total += x.sum((1, 2), dtype=torch.float64)
        squares += (x * x).sum((1, 2), dtype=torch.float64)
        count += x.shape[1] * x.shape[2]
    mean = total / max(count, 1)
    std = (squares / max(count, 1) - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant channel must not divide by 0
    return tuple(mean.tolist()), tuple(std.tolist())
