"""How a caller watches and steers a running compression: progress events and a checkpoint store.

The engine never does I/O of its own beyond its output folder; the service's runner plugs in here to
throttle progress writes to the database, honour cancels (by raising `JobStopped` from `on_progress`)
and keep checkpoints in object storage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["STAGES", "CheckpointStore", "Progress", "ProgressCallback"]

STAGES: tuple[str, ...] = (
    "loading", "evaluating", "pruning", "finetuning", "exporting", "verifying", "uploading",
)


@dataclass(frozen=True)
class Progress:
    """One progress event: where the engine is, how far along the whole job, and the latest metrics."""

    stage: str
    fraction: float  # of the whole job, in [0, 1]
    epoch: int = 0  # 1-based epoch within the current training phase, 0 outside training
    epochs: int = 0
    step: int = 0  # optimizer steps done in the current training phase
    steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    epoch_end: bool = False  # True once per finished epoch: a safe point to checkpoint
    warnings: tuple[str, ...] = ()  # what to change (e.g. a costly TPP zero-out); repeated once raised


ProgressCallback = Callable[[Progress], None]


class CheckpointStore(Protocol):
    """Where the engine keeps its resumable training state between attempts of one job."""

    def load(self) -> bytes | None:
        """Returns the latest checkpoint, or None when the job has none yet."""

    def save(self, blob: bytes, *, phase: str, epoch: int) -> None:
        """Stores a checkpoint taken at the end of `epoch` of training phase `phase`."""
