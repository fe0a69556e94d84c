"""How long a planned benchmark takes on this machine: a cost model from measured step times.

The constants are CPU seconds of one single-threaded process (torch.set_num_threads(1)), measured with
`time.process_time` on the 2-core development machine while other jobs shared it (so they lean slow):
Trainer.fit over real CIFAR batches (augmentation included, batch 64) and Trainer.evaluate over the
1017 validation images; `overhead_s` is the wall time pipeline.compress spends outside training (baseline
and pruned ONNX export + verification over the validation split, dependency-graph tracing, zstd, and the
alternating latency measurement, which alone takes ~5 s). A filter-pruned model trains faster, but far
less than its FLOPs fall (`PRUNED_COST`). With K workers on K free cores a run's wall time is close to its
CPU time. Checked against two Table 1 runs taken side by side (PR 0.9, 1024 images, 8 epochs): L1 +
matched FT took 42 s (model: 41 s), TPP 57 s (model: 61 s).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["COSTS", "PRUNED_COST", "Cost", "pruned_factor", "run_seconds", "wall_seconds"]


@dataclass(frozen=True)
class Cost:
    """Per-architecture costs of one single-threaded process."""

    train_ms_per_image: float  # forward + backward + SGD step, batch 64
    eval_ms_per_image: float  # forward only, batch 256
    overhead_s: float  # compress() outside training, resnet on the full 1017-image validation split


COSTS = {
    # resnet20: 4.6-5.1 ms/img train, 1.3-1.7 s per 1017-image evaluation, 10-20 s compress overhead.
    "resnet20": Cost(train_ms_per_image=5.0, eval_ms_per_image=1.6, overhead_s=15.0),
    # resnet56: 12.9-14.6 ms/img train, 3.2-3.9 s per evaluation, ~21 s compress overhead with 256
    # validation images (so ~33 s with all 1017: verification runs over them four times).
    "resnet56": Cost(train_ms_per_image=14.0, eval_ms_per_image=3.6, overhead_s=35.0),
}
# Epoch time (training + evaluation) of a ResNet-20 filter-pruned at layerwise ratio PR, relative to the
# dense one; measured at 0.5, 0.7, 0.9 (FLOPs fall 1.98x, 3.53x, 10.8x: per-layer costs that do not
# shrink with channels dominate), linear in between.
PRUNED_COST = ((0.0, 1.0), (0.5, 0.6), (0.7, 0.55), (0.9, 0.45), (1.0, 0.4))


def pruned_factor(pr: float) -> float:
    """Returns the epoch time of a model pruned at layerwise ratio `pr` relative to the dense model."""
    for (x0, y0), (x1, y1) in itertools.pairwise(PRUNED_COST):
        if x0 <= pr <= x1:
            return y0 + (y1 - y0) * (pr - x0) / (x1 - x0)
    return PRUNED_COST[-1][1]


def run_seconds(arch: str, *, train: int, val: int, dense_epochs: float, pruned_epochs: float = 0.0,
                pr: float = 0.0, extra_evals: int = 1) -> float:
    """Estimates one compress run: epochs of the dense model and of the model filter-pruned at `pr`, over
    `train` images, each followed by an evaluation over `val` images; `extra_evals` more evaluations of
    the dense model; and the fixed overhead. (The hooks of TPP and WeightMom cost ~1x a plain step: see
    step_overhead.py.)"""
    cost = COSTS[arch]
    eval_s = val * cost.eval_ms_per_image / 1000.0
    epoch_s = train * cost.train_ms_per_image / 1000.0 + eval_s
    epochs = dense_epochs + pruned_epochs * pruned_factor(pr)
    return epochs * epoch_s + extra_evals * eval_s + cost.overhead_s


def wall_seconds(durations: Iterable[float], workers: int) -> float:
    """Returns the wall time of running jobs of these durations in order on `workers` parallel slots
    (each job goes to the first free slot, as a process pool does)."""
    slots = [0.0] * max(1, workers)
    for duration in durations:
        heapq.heapreplace(slots, slots[0] + duration)  # slots[0] is the earliest free slot
    return max(slots)
