"""A dataset too big (or too varied) for memory: images decoded on the fly from their stored file.

A `torch.utils.data.DataLoader` reads each sample by key from the dataset's `ImageSource` (an archive
member, a Parquet row), decodes it (images.py) and applies the model's preprocessing (transforms.py).
Where cores allow it runs worker processes started by 'forkserver' (a process that already ran
multi-threaded torch must not fork), each with one torch thread; on 1-2 cores it decodes in-process.

Memory bound, independent of the dataset's bytes: the index, packed (per image a key and a label, 16
bytes; where its data lies, 29 bytes in a ZIP and 20 in a tar; its path's UTF-8 bytes; and the pass's
sample order, 8 bytes: under 100 bytes for ImageNet's paths, in this process and each loader worker;
measured in bench/data_loading.py), plus at most
`workers * PREFETCH + 1` batches of decoded, transformed images, plus per worker one stored image (at most
`ArchiveLimits.max_member_bytes`) and its decoded pixels (at most `max_image_pixels` * 3 bytes); a Parquet
source adds one row group's image column per worker (parquet_data.MAX_ROW_GROUP_BYTES).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from workers.compression.datasets import DatasetBundle
from workers.compression.image_index import ImageIndex
from workers.compression.images import Unreadable, decode

__all__ = ["PREFETCH", "StreamingBundle", "loader_workers"]

PREFETCH = 2  # batches each worker prepares ahead


def loader_workers() -> int:
    """Returns the DataLoader worker processes for this machine: none on 1-2 cores, else up to 8."""
    cores = len(os.sched_getaffinity(0))
    return 0 if cores <= 2 else min(cores - 1, 8)


def _one_thread(_: int) -> None:
    """Keeps each loader worker to one torch thread (the trainer owns the cores)."""
    torch.set_num_threads(1)


class _Images(Dataset[tuple[torch.Tensor, int, int]]):
    """Decodes and transforms sample i; yields (image, label, key), key -1 when the image decoded fine."""

    def __init__(self, index: ImageIndex, keys: np.ndarray, labels: np.ndarray,
                 transform: Callable[[Any], torch.Tensor], mode: str, max_pixels: int, shape: tuple[int, ...],
                 ) -> None:
        self.source, self.keys, self.labels = index.source, keys, labels
        self.transform, self.mode, self.max_pixels, self.shape = transform, mode, max_pixels, shape

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        key = int(self.keys[i])
        try:
            image = decode(self.source.name(key), self.source.read(key), self.mode, self.max_pixels)
        except Unreadable:  # a body broken past a readable header: dropped from the batch, counted
            return torch.zeros(self.shape), int(self.labels[i]), key
        with _one_torch_thread():
            return self.transform(image), int(self.labels[i]), -1


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Runs one image's transforms on one thread: splitting a single resize over the trainer's threads
    costs more than it saves (20x slower measured on a busy 2-core machine), and this is in-process when
    the loader has no workers. Switching costs well under a microsecond."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(kw_only=True)
class StreamingBundle(DatasetBundle):
    """Train and validation splits read from the stored dataset batch by batch (see the module's bound)."""

    index: ImageIndex
    image_size: int
    channels: int
    train_transform: Callable[[Any], torch.Tensor]
    eval_transform: Callable[[Any], torch.Tensor]
    max_pixels: int
    workers: int = field(default_factory=loader_workers)
    skipped_late: set[str] = field(default_factory=set)  # images whose body failed while training
    # One loader per (split, batch size): its workers persist across passes, so each epoch does not pay
    # for starting processes and importing torch again; `_Order` hands it each pass's sample order.
    _loaders: dict[tuple[str, int], tuple[DataLoader[Any], _Order]] = field(default_factory=dict, repr=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Returns one sample's shape, (channels, image_size, image_size)."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def train_samples(self) -> int:
        """Returns the number of training images."""
        return len(self.index.train[0])

    @property
    def val_samples(self) -> int:
        """Returns the number of validation images."""
        return len(self.index.val[0])

    def batches(
        self, split: Literal["train", "val"], batch_size: int, *, shuffle: bool,
        generator: torch.Generator | None = None, device: torch.device | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields normalized (x, y) batches on `device`, decoded by the loader's workers."""
        cuda = device is not None and device.type == "cuda"
        loader, order = self._loader(split, batch_size, generator, cuda)
        n = len(order.keys)
        order.current = (torch.randperm(n, generator=generator) if shuffle else torch.arange(n)).numpy()
        for x, y, bad in loader:
            broken = bad >= 0
            if broken.any():
                self.skipped_late.update(self.index.source.name(int(k)) for k in bad[broken])
                x, y = x[~broken], y[~broken]
            yield x.to(device, non_blocking=cuda), y.to(device, non_blocking=cuda)

    def _loader(self, split: Literal["train", "val"], batch_size: int, generator: torch.Generator | None,
                pin: bool) -> tuple[DataLoader[Any], _Order]:
        """Returns the split's loader at this batch size, built on first use."""
        if (split, batch_size) not in self._loaders:
            keys, labels = self.index.train if split == "train" else self.index.val
            augment = split == "train" and self.augment
            images = _Images(self.index, keys, labels,
                             self.train_transform if augment else self.eval_transform,
                             "L" if self.channels == 1 else "RGB", self.max_pixels, self.input_shape)
            order = _Order(keys)
            loader = DataLoader(
                images, batch_size=batch_size, sampler=order, num_workers=self.workers, pin_memory=pin,
                generator=generator, worker_init_fn=_one_thread if self.workers else None,
                multiprocessing_context="forkserver" if self.workers else None,
                prefetch_factor=PREFETCH if self.workers else None, persistent_workers=self.workers > 0,
            )
            self._loaders[(split, batch_size)] = (loader, order)
        return self._loaders[(split, batch_size)]


class _Order(Sampler[int]):
    """The sample order of the pass about to start (set by `batches`; the sampler runs in this process)."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys
        self.current = np.zeros(0, dtype=np.int64)  # 8 bytes per sample, where a list of ints takes ~36

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[int]:
        return map(int, self.current)
