"""Finetuning and evaluation: one readable loop shared by every method, with progress and checkpoints.

CONTRACT STUB (owned by the engine-core helper, who replaces the bodies; keep these names and signatures).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from workers.compression.config import FinetuneConfig
from workers.compression.datasets import DatasetBundle
from workers.compression.hooks import CheckpointStore, ProgressCallback
from workers.compression.methods.base import StepHooks

__all__ = ["Trainer"]


class Trainer:
    """Runs named training phases over a dataset, evaluating each epoch, reporting progress, checkpointing.

    Resume: when `checkpoints.load()` returns a blob at construction, phases it marks finished report
    `phase_done(...) is True` (the method skips them), and `fit` of the interrupted phase restores the
    model weights, optimizer, scheduler, RNG, hooks state and epoch from it before continuing.
    Values a method must keep across attempts (e.g. accuracy right after removal) go through
    `remember`/`recall` and travel inside checkpoints.
    """

    def __init__(
        self,
        *,
        data: DatasetBundle,
        finetune: FinetuneConfig,
        device: torch.device,
        seed: int,
        on_progress: ProgressCallback | None = None,
        checkpoints: CheckpointStore | None = None,
        progress_span: tuple[float, float] = (0.05, 0.85),  # share of the whole job that training covers
    ) -> None:
        raise NotImplementedError

    @property
    def steps_per_epoch(self) -> int:
        """Returns the optimizer steps in one epoch at the configured batch size."""
        raise NotImplementedError

    @property
    def history(self) -> list[dict[str, Any]]:
        """Returns one entry per finished epoch: phase, epoch, loss, accuracy, lr, seconds."""
        raise NotImplementedError

    def plan(self, phases: list[tuple[str, float]]) -> None:
        """Declares the phases (name, epochs) the method will run, so progress fractions and ETA add up."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> float:
        """Returns top-1 accuracy of `model` on the validation split (model left in its previous mode)."""
        raise NotImplementedError

    def fit(
        self,
        model: nn.Module,
        *,
        phase: str,
        epochs: float,
        lr: float,
        schedule: Literal["step", "cosine", "constant"],
        optimizer: Literal["sgd", "adamw"] = "sgd",
        momentum: float | None = None,
        weight_decay: float | None = None,
        hooks: StepHooks | None = None,
        stage: str = "finetuning",
    ) -> None:
        """Trains `model` for `epochs` (fractional allowed: rounded up to whole steps) with a fresh optimizer;
        hooks run around every step; evaluates and checkpoints at each epoch end; honours JobStopped."""
        raise NotImplementedError

    def phase_done(self, phase: str) -> bool:
        """Tells whether a resumed checkpoint says `phase` already finished (the method then skips it)."""
        raise NotImplementedError

    def remember(self, key: str, value: float | int | str) -> None:
        """Keeps a value across attempts of the job (it travels in every later checkpoint)."""
        raise NotImplementedError

    def recall(self, key: str) -> float | int | str | None:
        """Returns a value kept by `remember`, from this attempt or a resumed checkpoint."""
        raise NotImplementedError
