"""Knowledge distillation from the model as uploaded (Hinton et al. 2015), for every method's finetuning.

The teacher is a frozen copy of the dense model taken before pruning: eval mode (BatchNorm uses its running
statistics, dropout is off), no gradients. Its logits come from the very batch the student sees, augmentation
included, so the soft targets match the student's inputs.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from workers.compression.config import DistillOptions, FinetuneConfig

__all__ = ["Teacher", "distill_loss", "distill_report", "make_teacher"]


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, *, alpha: float,
                 temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (alpha * T² * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y), CE(s, y)).

    Logits are (B, classes), targets (B,). KL is averaged over the batch; the T² keeps the soft term's
    gradient on the scale of the hard one whatever the temperature.
    """
    hard = F.cross_entropy(student, target)
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard, hard


class Teacher:
    """A frozen model that gives soft targets: always in eval mode, never receiving gradients."""

    def __init__(self, model: nn.Module, options: DistillOptions) -> None:
        """Keeps `model` (already a private copy) frozen, with the loss settings."""
        self.model = model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.options = options

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the teacher's logits (B, classes) for a batch, in eval mode whatever was done to it."""
        self.model.eval()
        out: torch.Tensor = self.model(x)
        return out

    def loss(self, student: torch.Tensor, x: torch.Tensor, target: torch.Tensor,
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (blended loss, cross-entropy) of the student's logits on batch `x`."""
        return distill_loss(student, self.logits(x), target, alpha=self.options.alpha,
                            temperature=self.options.temperature)


def make_teacher(model: nn.Module, finetune: FinetuneConfig) -> Teacher | None:
    """Returns a frozen copy of the dense `model` as the teacher, or None when distillation is off."""
    if finetune.distill is False:
        return None
    return Teacher(copy.deepcopy(model), finetune.distill)


def distill_report(finetune: FinetuneConfig) -> dict[str, float] | None:
    """Returns the distillation settings a finetune used, for the report (None: plain cross-entropy)."""
    return None if finetune.distill is False else finetune.distill.model_dump()
