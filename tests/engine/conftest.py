"""Shared engine fixtures: tiny learnable data and tiny models, so that every engine test runs in seconds.

The image data is learnable on purpose (class k lights up quadrant k), so accuracy checks mean something:
a tiny CNN goes from chance (0.25) to near 1.0 in a few epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from workers.compression.config import DataOptions, FinetuneConfig
from workers.compression.datasets import DatasetBundle, from_arrays
from workers.compression.export import export_onnx
from workers.compression.training import Trainer

torch.set_num_threads(1)

CLASSES = 4
IMAGE_SHAPE = (3, 8, 8)
FEATURES = 12
TRAIN, VAL = 256, 128


def quadrant_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns n uint8 images (N, 3, 8, 8) and labels (N,): class k adds a bright patch to quadrant k."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.integers(0, 110, (n, *IMAGE_SHAPE))  # background noise
    for i, label in enumerate(y):
        row, col = divmod(int(label), 2)
        x[i, :, row * 4:row * 4 + 4, col * 4:col * 4 + 4] += 120 + 20 * np.arange(3)[:, None, None]
    return x.astype(np.uint8), y.astype(np.int64)


def cluster_features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns n float32 feature vectors (N, F) around one fixed center per class, and labels (N,)."""
    centers = np.random.default_rng(1234).normal(0.0, 2.0, (CLASSES, FEATURES))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    return (centers[y] + rng.normal(0.0, 1.0, (n, FEATURES))).astype(np.float32), y.astype(np.int64)


def image_arrays() -> dict[str, np.ndarray]:
    """Returns the four splits of the tiny image dataset, as an .npz would hold them."""
    x_train, y_train = quadrant_images(TRAIN, seed=0)
    x_val, y_val = quadrant_images(VAL, seed=1)
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}


class TinyResNet(nn.Module):
    """Stem, one residual block (an add), a strided conv, pool, linear: ~2.6k weights, every layer kind."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.down = nn.Sequential(
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, 8, 8) to logits (B, classes)."""
        h = self.stem(x)  # (B, 8, 8, 8)
        h = torch.relu(h + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h))))))  # residual add
        h = self.down(h).mean(dim=(2, 3))  # (B, 16, 4, 4) -> (B, 16)
        out: torch.Tensor = self.fc(h)
        return out


class SliverNet(nn.Module):
    """A residual stream (coupled to the stem, left alone) with a 2-channel side branch: the only prunable
    group, a sliver of the compute."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.stem, self.body = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)
        self.side = nn.Sequential(nn.Conv2d(32, 2, 1), nn.ReLU(), nn.Conv2d(2, 32, 1))
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) to logits."""
        x = torch.relu(self.stem(x))
        x = x + self.body(x) + self.side(x)
        out: torch.Tensor = self.fc(x.mean(dim=(2, 3)))
        return out


class TinyMLP(nn.Module):
    """Two linear layers for flat features."""

    def __init__(self, features: int = FEATURES, classes: int = CLASSES) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, 16)
        self.fc2 = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, F) to logits (B, classes)."""
        out: torch.Tensor = self.fc2(torch.relu(self.fc1(x)))
        return out


class MemoryCheckpoints:
    """A CheckpointStore in memory that also records what was saved when."""

    def __init__(self, blob: bytes | None = None) -> None:
        self.blob = blob
        self.saved: list[tuple[str, int]] = []

    def load(self) -> bytes | None:
        """Returns the latest checkpoint."""
        return self.blob

    def save(self, blob: bytes, *, phase: str, epoch: int) -> None:
        """Keeps the checkpoint and notes its phase and epoch."""
        self.blob = blob
        self.saved.append((phase, epoch))


def image_bundle() -> DatasetBundle:
    """Returns the tiny learnable image dataset, without augmentation (so that runs are cheap to compare)."""
    arrays = image_arrays()
    return from_arrays(arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"],
                       DataOptions(augment=False))


def train_tiny_cnn(data: DatasetBundle) -> TinyResNet:
    """Returns a TinyResNet trained for 3 epochs on the image data (well above chance), in eval mode."""
    torch.manual_seed(0)
    model = TinyResNet()
    finetune = FinetuneConfig(batch_size=32)
    trainer = Trainer(data=data, finetune=finetune, device=torch.device("cpu"), seed=0)
    trainer.fit(model, phase="pretrain", epochs=3, lr=0.05, schedule="constant")
    return model.eval()


def write_inputs(folder: Path) -> tuple[Path, Path]:
    """Writes a trained TinyResNet as ONNX and the image dataset as .npz into `folder`; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    model_path, data_path = folder / "tiny.onnx", folder / "data.npz"
    export_onnx(train_tiny_cnn(image_bundle()), IMAGE_SHAPE, model_path)
    arrays = image_arrays()
    np.savez(data_path, x_train=arrays["x_train"], y_train=arrays["y_train"], x_val=arrays["x_val"],
             y_val=arrays["y_val"])
    return model_path, data_path


@pytest.fixture
def image_data() -> DatasetBundle:
    """The tiny learnable image dataset, without augmentation."""
    return image_bundle()


@pytest.fixture
def flat_data() -> DatasetBundle:
    """The tiny learnable flat-feature dataset."""
    x_train, y_train = cluster_features(TRAIN, seed=0)
    x_val, y_val = cluster_features(VAL, seed=1)
    return from_arrays(x_train, y_train, x_val, y_val, DataOptions(augment=False))


@pytest.fixture
def tiny_cnn() -> TinyResNet:
    """A freshly initialized TinyResNet (seeded)."""
    torch.manual_seed(0)
    return TinyResNet()


@pytest.fixture
def tiny_mlp() -> TinyMLP:
    """A freshly initialized TinyMLP (seeded)."""
    torch.manual_seed(0)
    return TinyMLP()


@pytest.fixture
def trained_cnn(image_data: DatasetBundle) -> TinyResNet:
    """A TinyResNet trained briefly on the image data, in eval mode."""
    return train_tiny_cnn(image_data)


@pytest.fixture(scope="module")
def input_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A trained TinyResNet as ONNX (an uploaded model not from the zoo) and the image .npz, per module."""
    return write_inputs(tmp_path_factory.mktemp("inputs"))
