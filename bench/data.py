"""The benchmark's inputs: where the shared data lives and reduced-size copies of the CIFAR-10 subset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["DATA_DIR", "SUBSET_SEED", "dataset_file", "weights_file"]

# ../shared/data relative to the repository (bench/ sits in its root); SECATEUR_BENCH_DATA overrides it.
REPO_DIR = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SECATEUR_BENCH_DATA") or REPO_DIR.parent / "shared" / "data")
SOURCE = "cifar10_subset.npz"
# One fixed draw of training images for every run and seed: arms differ by method, never by data.
SUBSET_SEED = 0


def weights_file(arch: str) -> Path:
    """Returns the pretrained safetensors of `arch` (resnet20 or resnet56), refusing a missing file."""
    path = DATA_DIR / f"cifar10_{arch}.safetensors"
    if not path.is_file():
        raise SystemExit(f"missing {path}: the benchmark needs ../shared/data (or SECATEUR_BENCH_DATA)")
    return path


def dataset_file(cache_dir: Path, *, train: int, val: int) -> Path:
    """Returns an .npz with `train` training images (a fixed random draw) and the first `val` validation
    images; 0 means the whole split, and with both whole the shared file itself is used."""
    source = DATA_DIR / SOURCE
    if not source.is_file():
        raise SystemExit(f"missing {source}: the benchmark needs ../shared/data (or SECATEUR_BENCH_DATA)")
    if train == 0 and val == 0:
        return source
    path = cache_dir / f"cifar10_train{train or 'all'}_val{val or 'all'}.npz"
    if path.is_file():
        return path
    with np.load(source, allow_pickle=False) as npz:
        x_train, y_train, x_val, y_val = (npz[k] for k in ("x_train", "y_train", "x_val", "y_val"))
    # A random draw, not the first N: the first images all come from CIFAR's first training batch.
    order = np.random.default_rng(SUBSET_SEED).permutation(len(y_train))
    keep = np.sort(order[:train]) if train else order
    cut = val or len(y_val)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")  # np.savez keeps a name that ends in .npz
    np.savez(tmp, x_train=x_train[keep], y_train=y_train[keep], x_val=x_val[:cut], y_val=y_val[:cut])
    tmp.replace(path)  # atomic: parallel workers never read half a file
    return path
