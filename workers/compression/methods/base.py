"""The contract between the pipeline and a pruning method, and the hooks a method hangs on training.

A method turns a dense model into a pruned one and finetunes it, by composing training phases of
`training.Trainer` with its own `StepHooks`. Its options model lives in `config.METHOD_OPTIONS` (torch-free,
so the service validates options too); its implementation is registered in `methods.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

    from workers.compression.config import JobConfig
    from workers.compression.datasets import DatasetBundle
    from workers.compression.training import Trainer

__all__ = ["MethodResult", "PruneContext", "PruningMethod", "StepHooks"]


class StepHooks:
    """Callbacks a method hangs on a training phase; every default does nothing."""

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Runs after loss.backward() and before optimizer.step(): add regularization gradients here."""

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Runs after optimizer.step(): re-apply masks, update scores, prune on schedule."""

    def finished(self) -> bool:
        """Tells the trainer to end the phase after this step (e.g. TPP's adaptive ramp reached its goal)."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """Returns the hook's resumable state (tensors and plain values only: loadable with weights_only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned, when a job resumes from a checkpoint."""


@dataclass
class PruneContext:
    """Everything a method may use: the dense model (already on `device`), data, config and the trainer."""

    model: nn.Module
    data: DatasetBundle
    config: JobConfig
    device: torch.device
    trainer: Trainer


@dataclass
class MethodResult:
    """What a method hands back: the pruned, finetuned model and the method's part of the report."""

    model: nn.Module
    # Goes to report["method"]: resolved options, and method facts such as
    # accuracy_before_removal / accuracy_after_removal (TPP) or accuracy_after_last_prune (WeightMom).
    report: dict[str, Any] = field(default_factory=dict)
    # Per-layer facts for report["layers"]: {"name", "kind": "conv"|"linear", "channels"/"kept_channels"
    # or "params"/"nonzero"/"density"}.
    layers: list[dict[str, Any]] = field(default_factory=list)


class PruningMethod(Protocol):
    """A registered pruning method: `run` prunes and finetunes `ctx.model` and returns the result."""

    name: str
    structured: bool

    def run(self, ctx: PruneContext) -> MethodResult:
        """Prunes and finetunes the model in `ctx`, reporting progress through `ctx.trainer`."""
        ...
