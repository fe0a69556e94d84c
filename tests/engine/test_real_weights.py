"""Real CIFAR-10 checkpoints load into the zoo and reach their published accuracy on the shared subset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from workers.compression.config import DataOptions
from workers.compression.datasets import load_dataset
from workers.compression.model_io import load_model

SHARED = Path(os.environ.get("SECATEUR_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED / "cifar10_subset.npz").exists(), reason=f"no shared data at {SHARED}"),
]


@pytest.mark.parametrize(("architecture", "accuracy"), [("resnet20", 0.9164), ("resnet56", 0.9272)])
def test_reference_weights_reach_their_accuracy(architecture: str, accuracy: float) -> None:
    """Strict loading plus the default normalization reproduces the measured x_val accuracy."""
    torch.set_num_threads(1)
    model = load_model(SHARED / f"cifar10_{architecture}.safetensors", architecture=architecture,
                       input_shape=(3, 32, 32), num_classes=10)
    data = load_dataset(SHARED / "cifar10_subset.npz", DataOptions(), default_norm=model.default_norm)
    correct = 0
    with torch.no_grad():
        for x, y in data.batches("val", 256, shuffle=False):
            correct += int((model.module(x).argmax(1) == y).sum())
    measured = correct / len(data.y_val)
    print(f"{architecture}: {measured:.4%} on {len(data.y_val)} images")
    assert measured == pytest.approx(accuracy, abs=5e-5)
