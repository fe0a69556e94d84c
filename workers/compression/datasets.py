"""Datasets for training and evaluation: `.npz` and image-folder archives, normalized, optionally augmented.

CONTRACT STUB (owned by the engine-inputs helper, who replaces the bodies; keep these names and shapes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from workers.compression.config import DataOptions

__all__ = ["DatasetBundle", "from_arrays", "load_dataset"]


@dataclass
class DatasetBundle:
    """Train and validation splits held in memory, with the normalization every batch gets."""

    x_train: torch.Tensor  # (N, C, H, W) uint8 or float32, or (N, F) for flat data; not yet normalized
    y_train: torch.Tensor  # (N,) int64
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, applied after `scale`
    std: tuple[float, ...]
    scale: float  # 1/255 for uint8 images, 1.0 for float data
    augment: bool  # random crop (pad 4) + horizontal flip on image training batches

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Returns one sample's shape, e.g. (3, 32, 32)."""
        return tuple(self.x_train.shape[1:])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Returns `x` as normalized float32: (x * scale - mean) / std per channel."""
        raise NotImplementedError

    def batches(
        self,
        split: Literal["train", "val"],
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields normalized (x, y) batches on `device`; train batches are augmented when `augment`."""
        raise NotImplementedError


def from_arrays(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
    options: DataOptions, *, default_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> DatasetBundle:
    """Validates arrays (NCHW or NHWC, uint8 or float) and builds a bundle; mean/std from options,
    else `default_norm` (an architecture's training convention), else computed on the train split."""
    raise NotImplementedError


def load_dataset(
    path: Path, options: DataOptions, *, default_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> DatasetBundle:
    """Loads `.npz` or an image-folder archive (`.zip`, `.tar`, `.tar.gz`) safely; raises InvalidDataset."""
    raise NotImplementedError
