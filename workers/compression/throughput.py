"""Training throughput: images per second and the share of step time spent waiting for the next batch.

A data-wait share near 0 means the loader keeps up; near 1, the model waits on decoding. The wait is the
time spent inside the batch iterator's `next()`; the loop synchronizes every step (it reads the loss), so on
CPU and on CUDA this is time the device had nothing queued by this loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import torch

__all__ = ["TimedBatches"]


class TimedBatches:
    """Wraps a pass over (x, y) batches, counting images and the seconds spent waiting for each batch."""

    def __init__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._batches = iter(batches)
        self.started = time.perf_counter()
        self.wait_s = 0.0
        self.images = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        t = time.perf_counter()
        x, y = next(self._batches)
        self.wait_s += time.perf_counter() - t
        self.images += int(y.shape[0])
        return x, y

    def metrics(self) -> dict[str, float]:
        """Returns images/s and data-wait share since the pass started."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return {"images_per_s": self.images / elapsed, "data_wait_share": min(self.wait_s / elapsed, 1.0)}
