"""A tiny, real compression job for integration and e2e tests: an MLP on a learnable 4-class blob dataset.

The model is the zoo's `mlp` with seeded random weights (safetensors) and the data are well-separated
Gaussian blobs, so one finetuning epoch on two CPU cores takes a second or two yet gives a real accuracy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CLASSES, SHAPE = 4, (1, 8, 8)
CONFIG: dict[str, Any] = {
    "method": "magnitude",
    "architecture": "mlp",
    "target": {"sparsity": 0.5},
    "finetune": {"epochs": 1, "batch_size": 64, "lr": 0.05},
    "options": {"interval": 1},
    "data": {"augment": False},
}


@dataclass(frozen=True)
class TinyJob:
    """Paths of the job's two inputs and its config (as the JSON string the API takes)."""

    model: Path
    dataset: Path
    config: str

    def val(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns the validation split (x, y) exactly as uploaded."""
        with np.load(self.dataset, allow_pickle=False) as npz:
            return npz["x_val"], npz["y_val"]


def _blobs(rng: np.random.Generator, n: int, centers: np.ndarray, shape: tuple[int, ...]
           ) -> tuple[np.ndarray, np.ndarray]:
    """Draws `n` float32 samples of `shape` around one of the class centers each, with labels."""
    y = rng.integers(0, CLASSES, size=n)
    x = centers[y] + rng.normal(0.0, 0.6, size=(n, int(np.prod(shape))))
    return x.reshape(n, *shape).astype(np.float32), y.astype(np.int64)


def write_tiny_job(folder: Path, seed: int = 0, *, train: int = 256, shape: tuple[int, ...] = SHAPE,
                   config: dict[str, Any] | None = None) -> TinyJob:
    """Writes model.safetensors (zoo mlp, random weights) and data.npz into `folder`.

    `train` and `shape` make it bigger (the chaos suite wants epochs long enough to be interrupted).
    """
    import torch
    from safetensors.torch import save_file

    from workers.compression import zoo

    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, size=(CLASSES, int(np.prod(shape))))
    x_train, y_train = _blobs(rng, train, centers, shape)
    x_val, y_val = _blobs(rng, 128, centers, shape)
    folder.mkdir(parents=True, exist_ok=True)
    dataset = folder / "data.npz"
    np.savez(dataset, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    torch.manual_seed(seed)
    model = zoo.build("mlp", num_classes=CLASSES, input_shape=shape)
    weights = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return TinyJob(weights, dataset, json.dumps(config or CONFIG))
