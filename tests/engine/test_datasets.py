"""Datasets: npz loading and validation, layouts, normalization sources, and reproducible augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.compression.config import DataOptions
from workers.compression.datasets import DatasetBundle, from_arrays, load_dataset, random_crop_flip
from workers.compression.errors import InvalidDataset

CIFAR_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _images(n: int, *, channels_last: bool = False, seed: int = 0) -> np.ndarray:
    """Returns n random uint8 RGB 8x8 images, NCHW or NHWC."""
    x = np.random.default_rng(seed).integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)
    return x.transpose(0, 2, 3, 1).copy() if channels_last else x


def _labels(n: int, k: int = 4) -> np.ndarray:
    """Returns n labels cycling through k classes."""
    return np.arange(n) % k


def _bundle(**options: object) -> DatasetBundle:
    """Returns a small image bundle built with the given DataOptions fields."""
    return from_arrays(_images(10), _labels(10), _images(6, seed=1), _labels(6),
                       DataOptions.model_validate(options))


def test_nhwc_is_transposed_to_nchw() -> None:
    """Channels-last input yields the same NCHW tensor as the channels-first original."""
    nchw = _images(5)
    bundle = from_arrays(_images(5, channels_last=True), _labels(5), nchw, _labels(5), DataOptions())
    assert bundle.input_shape == (3, 8, 8)
    assert torch.equal(bundle.x_train, bundle.x_val)
    assert bundle.x_train.dtype == torch.uint8
    assert bundle.num_classes == 4


def test_normalize_uses_options_then_default_then_train_stats() -> None:
    """Options win over the architecture default, which wins over statistics computed on train."""
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    opt = _bundle(mean=[0.0, 0.5, 1.0], std=[1.0, 0.5, 2.0])
    assert opt.normalize(x)[0, :, 0, 0].tolist() == pytest.approx([1.0, 1.0, 0.0])
    default = from_arrays(_images(4), _labels(4), _images(4), _labels(4), DataOptions(),
                          default_norm=CIFAR_NORM)
    assert default.mean == CIFAR_NORM[0]
    assert default.scale == pytest.approx(1 / 255)
    computed = _bundle()
    train = computed.normalize(computed.x_train)
    assert train.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert train.std(dim=(0, 2, 3), unbiased=False).sub(1).abs().max() < 1e-4


def test_flat_float_data_gets_global_stats() -> None:
    """(N, F) float data keeps its scale of 1 and is standardized with one mean and std."""
    rng = np.random.default_rng(0)
    x = (rng.normal(3.0, 2.0, (50, 6))).astype(np.float64)
    bundle = from_arrays(x, _labels(50), x[:10], _labels(10), DataOptions())
    assert bundle.input_shape == (6,)
    assert bundle.scale == 1.0
    assert bundle.x_train.dtype == torch.float32
    assert len(bundle.mean) == 1
    assert bundle.normalize(bundle.x_train).mean().abs() < 1e-5


def test_batches_cover_split_once_and_are_reproducible() -> None:
    """A shuffled pass yields every sample once; the same generator seed gives the same augmented batches."""
    bundle = _bundle()
    runs = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(7)
        runs.append(list(bundle.batches("train", 4, shuffle=True, generator=gen)))
    assert [len(y) for _, y in runs[0]] == [4, 4, 2]
    for (xa, ya), (xb, yb) in zip(*runs, strict=True):
        assert torch.equal(xa, xb)
        assert torch.equal(ya, yb)
        assert xa.dtype == torch.float32
    labels = torch.cat([y for _, y in runs[0]])
    assert sorted(labels.tolist()) == sorted(bundle.y_train.tolist())
    val = torch.cat([x for x, _ in bundle.batches("val", 4, shuffle=False)])
    assert torch.allclose(val, bundle.normalize(bundle.x_val))  # no augmentation on val


def test_augment_off_returns_plain_normalized_train() -> None:
    """With augment=False, unshuffled train batches are exactly the normalized samples."""
    bundle = _bundle(augment=False)
    x = torch.cat([x for x, _ in bundle.batches("train", 3, shuffle=False)])
    assert torch.equal(x, bundle.normalize(bundle.x_train))


def test_random_crop_flip_is_a_shifted_maybe_flipped_window() -> None:
    """Each output equals a PAD-padded crop of its input, flipped or not."""
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5) + 1
    out = random_crop_flip(x, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        windows = [padded[i, :, r:r + 5, c:c + 5] for r in range(9) for c in range(9)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(out[i], w) for w in windows)


def test_augment_flips_and_shifts_some_samples() -> None:
    """Over many samples augmentation changes images (it is not a no-op)."""
    x = torch.arange(64 * 5 * 5, dtype=torch.float32).view(64, 1, 5, 5)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    changed = (out != x).flatten(1).any(1)
    assert int(changed.sum()) >= 56  # an unchanged sample needs the centre crop and no flip: p = 1/162


@pytest.mark.parametrize(
    ("x", "y", "needle"),
    [
        (np.zeros((4, 3, 8, 8), dtype=np.int32), _labels(4), "dtype"),
        (_images(4), np.arange(4).astype(np.float32), "integers"),
        (_images(4), -_labels(4), "negative"),
        (_images(4), _labels(3), "one label per sample"),
        (np.zeros((4, 3, 8, 8, 1), dtype=np.uint8), _labels(4), "shape"),
        (np.full((4, 6), np.nan, dtype=np.float32), _labels(4), "NaN"),
        (np.zeros((0, 3, 8, 8), dtype=np.uint8), np.zeros(0, dtype=np.int64), "empty"),
    ],
)
def test_bad_arrays_are_refused(x: np.ndarray, y: np.ndarray, needle: str) -> None:
    """Each malformed split raises InvalidDataset with a message naming the problem."""
    with pytest.raises(InvalidDataset, match=needle):
        from_arrays(x, y, x, y, DataOptions())


def test_mismatched_split_shapes_and_norm_channels_are_refused() -> None:
    """Train and val must share a sample shape; a 3-channel norm does not fit grayscale images."""
    with pytest.raises(InvalidDataset, match="share one sample shape"):
        from_arrays(_images(4), _labels(4), _images(4)[:, :, :4], _labels(4), DataOptions())
    gray = np.zeros((4, 8, 8), dtype=np.uint8)
    with pytest.raises(InvalidDataset, match="channel"):
        from_arrays(gray, _labels(4), gray, _labels(4), DataOptions(), default_norm=CIFAR_NORM)


def test_npz_round_trip(tmp_path: Path) -> None:
    """A plain .npz loads into a bundle with the four splits intact."""
    path = tmp_path / "data.bin"  # the name carries no meaning: content decides
    with path.open("wb") as f:
        np.savez(f, x_train=_images(6), y_train=_labels(6), x_val=_images(3), y_val=_labels(3))
    bundle = load_dataset(path, DataOptions(), default_norm=CIFAR_NORM)
    assert bundle.x_train.shape == (6, 3, 8, 8)
    assert bundle.y_val.tolist() == [0, 1, 2]


def test_npz_missing_key_object_array_and_truncation_are_refused(tmp_path: Path) -> None:
    """Missing splits, pickled object arrays and a cut-off file each give InvalidDataset."""
    missing = tmp_path / "missing.npz"
    np.savez(missing, x_train=_images(2), y_train=_labels(2))
    with pytest.raises(InvalidDataset, match="lacks"):
        load_dataset(missing, DataOptions())
    objects = tmp_path / "objects.npz"
    np.savez(objects, x_train=np.array([{"a": 1}], dtype=object), y_train=_labels(1),
             x_val=_images(1), y_val=_labels(1))
    with pytest.raises(InvalidDataset, match="pickle"):
        load_dataset(objects, DataOptions())
    good = tmp_path / "good.npz"
    np.savez(good, x_train=_images(6), y_train=_labels(6), x_val=_images(3), y_val=_labels(3))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:600])
    with pytest.raises(InvalidDataset):
        load_dataset(cut, DataOptions())
