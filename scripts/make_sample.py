"""Writes a small real sample job (scikit-learn digits + a trained LeNet-300-100) for the quickstart.

Used when ../shared/data (CIFAR-10 + pretrained ResNets) is absent: the digits ship inside scikit-learn, so
nothing is downloaded. Output: OUT/digits.npz (x_* uint8 (N, 1, 8, 8), y_* int64) and OUT/mlp.safetensors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from workers.compression.zoo import build


def make_digits(out: Path) -> Path:
    """Saves the digits as a uint8 image npz split 80/20 with a fixed permutation."""
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(0.8 * len(images))
    train, val = order[:cut], order[cut:]
    path = out / "digits.npz"
    np.savez(path, x_train=images[train], y_train=digits.target[train].astype(np.int64),
             x_val=images[val], y_val=digits.target[val].astype(np.int64))
    return path


def train_mlp(dataset: Path, out: Path, epochs: int = 30) -> Path:
    """Trains the zoo's MLP on the digits (x / 255, no further normalization) and saves its weights."""
    torch.manual_seed(0)
    data = np.load(dataset)
    x = torch.from_numpy(data["x_train"]).float().div(255.0)
    y = torch.from_numpy(data["y_train"])
    model = build("mlp", num_classes=10, input_shape=(1, 8, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    path = out / "mlp.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def main() -> None:
    """Writes the sample dataset and model into the folder given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    print(train_mlp(make_digits(out), out))


if __name__ == "__main__":
    main()
