"""A sweep's inputs for the browser test: ResNet-20 and a CIFAR-10-like dataset, generated or real.

Generated (the default, so the test needs no ../shared): ResNet-20 with seeded random weights and 32x32
colour images of 10 classes, each class a brighter patch in its own place, learnable in an epoch. With
SECATEUR_UPDATE_DOCS=1 and the shared files present, the trained ResNet-20 and the real CIFAR-10 subset
are used instead, so docs/sweep.png shows real figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["SHARED", "sweep_inputs", "uses_real_data"]

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
CLASSES, SIDE = 10, 32


def uses_real_data() -> bool:
    """Whether this run refreshes the docs with the real model and data."""
    return bool(os.environ.get("SECATEUR_UPDATE_DOCS")) and (SHARED / "cifar10_subset.npz").exists()


def _images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` uint8 images (n, 3, 32, 32) of noise with a bright 8x8 patch where the class puts it."""
    y = rng.integers(0, CLASSES, n)
    x = rng.integers(0, 120, (n, 3, SIDE, SIDE))
    for i, label in enumerate(y):
        row, col = divmod(int(label), 4)
        x[i, int(label) % 3, 8 * row:8 * row + 8, 8 * col:8 * col + 8] += 120
    return x.astype(np.uint8), y.astype(np.int64)


def sweep_inputs(folder: Path) -> tuple[Path, Path]:
    """Returns (ResNet-20 safetensors, dataset .npz) paths, writing generated ones into `folder`."""
    if uses_real_data():
        return SHARED / "cifar10_resnet20.safetensors", SHARED / "cifar10_subset.npz"
    import torch
    from safetensors.torch import save_file

    from workers.compression import zoo

    rng = np.random.default_rng(0)
    (x_train, y_train), (x_val, y_val) = _images(rng, 320), _images(rng, 160)
    folder.mkdir(parents=True, exist_ok=True)
    dataset, model = folder / "cifar_like.npz", folder / "resnet20.safetensors"
    np.savez(dataset, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    torch.manual_seed(0)
    net = zoo.build("resnet20", num_classes=CLASSES, input_shape=(3, SIDE, SIDE))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(model))
    return model, dataset
