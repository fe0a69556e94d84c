"""The model's preprocessing as torchvision (v2) transforms, for images decoded one at a time.

Train: RandomResizedCrop(image_size) + horizontal flip, as timm and torchvision train ImageNet models
(timm's auto_augment, mixup and random erasing stay off). Eval: resize the short side to
image_size / crop_pct, center crop image_size. Both end in `(x * scale - mean) / std`, written as
torchvision's Normalize of the unscaled pixels: (x - mean / scale) / (std / scale).
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

from workers.compression.config import Interpolation

__all__ = ["eval_transform", "train_transform"]

Norm = tuple[tuple[float, ...], tuple[float, ...]]


def train_transform(size: int, interpolation: Interpolation, norm: Norm, scale: float) -> v2.Compose:
    """Returns PIL image -> normalized float (C, size, size), randomly cropped and flipped."""
    return v2.Compose([
        v2.PILToTensor(),  # uint8 (C, H, W): cropping and resizing bytes is cheaper than floats
        v2.RandomResizedCrop(size, interpolation=InterpolationMode(interpolation), antialias=True),
        v2.RandomHorizontalFlip(),
        *_normalized(norm, scale),
    ])


def eval_transform(size: int, crop_pct: float, interpolation: Interpolation, norm: Norm | None,
                   scale: float) -> v2.Compose:
    """Returns PIL image -> (C, size, size): resized, center-cropped, normalized (uint8 if `norm` is None)."""
    short = max(size, round(size / crop_pct))
    steps: list[torch.nn.Module] = [
        v2.PILToTensor(),
        v2.Resize(short, interpolation=InterpolationMode(interpolation), antialias=True),
        v2.CenterCrop(size),
    ]
    return v2.Compose(steps + (_normalized(norm, scale) if norm is not None else []))


def _normalized(norm: Norm, scale: float) -> list[torch.nn.Module]:
    """Returns the float conversion and `(x * scale - mean) / std` per channel."""
    mean, std = norm
    return [v2.ToDtype(torch.float32, scale=False),
            v2.Normalize([m / scale for m in mean], [s / scale for s in std])]
