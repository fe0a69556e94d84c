"""Why a training phase produced a non-finite loss: the error names the likely cause, and blames the
learning rate only when updates at that rate blew up a model that started the phase healthy.

The loop feeds a `DivergenceWatch` every step; when the loss or the gradient stops being finite it asks
the watch for the error: non-finite inputs are the dataset's fault, non-finite weights or logits before
the first update are the model's (or an earlier stage's), and a blow-up after finite steps is the
learning rate's, with what made the model fragile (no normalization layers, a damaged start) said too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from workers.compression.errors import CompressionError, InvalidConfig, InvalidDataset, InvalidModel

__all__ = ["DivergenceWatch", "grad_norm", "non_finite_tensor"]

EXPLODED = 100.0  # gradient-norm growth over the phase's first step that counts as an explosion
DAMAGED = 1.5  # a first loss this many times chance level (ln classes) means the phase started damaged
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
              nn.modules.instancenorm._InstanceNorm)


def non_finite_tensor(model: nn.Module) -> str | None:
    """Returns the name of the first parameter or floating buffer holding NaN or Inf, or None."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def grad_norm(model: nn.Module) -> float:
    """Returns the L2 norm of all gradients together (0.0 when none exist)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


@dataclass
class DivergenceWatch:
    """Remembers how one phase went (first and last finite loss and gradient norm) to explain a divergence."""

    phase: str
    classes: int
    first_loss: float | None = None
    last_loss: float | None = None
    first_grad: float | None = None
    last_grad: float | None = None
    steps: int = field(default=0)  # finite steps taken in this phase (by this attempt)

    def start(self, model: nn.Module) -> None:
        """Refuses to train a model that already holds NaN/Inf weights or statistics."""
        name = non_finite_tensor(model)
        if name is not None:
            raise InvalidModel(f"the model's tensor {name!r} holds NaN or Inf before phase {self.phase!r} "
                               "starts; training cannot recover from that (check the uploaded weights)")

    def check_inputs(self, x: torch.Tensor, step: int) -> None:
        """Refuses a training batch with NaN/Inf values: no learning rate fixes the data."""
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise InvalidDataset(f"the training batch of step {step} holds NaN or Inf values; "
                                 "the dataset (or its normalization: data.std must not be 0) is broken")

    def observe(self, loss: float, grad: float) -> None:
        """Records a step whose loss and gradient were finite."""
        if self.first_loss is None:
            self.first_loss, self.first_grad = loss, grad
        self.last_loss, self.last_grad = loss, grad
        self.steps += 1

    def error(
        self, model: nn.Module, *, step: int, loss: float, lr: float, what: str = "loss",
    ) -> CompressionError:
        """Returns the error explaining why `what` (loss or gradient) was not finite at `step`."""
        where = f"training diverged in phase {self.phase!r} at step {step} ({what} {loss})"
        if self.steps == 0:
            return InvalidModel(
                f"{where}, on the first batch this run of the phase took, before any update: the model's "
                "outputs overflow on this data, so the learning rate is not the cause; check the input "
                "normalization (data.mean, data.std, data.scale) and the weights")
        broken = non_finite_tensor(model)
        history = (f"; the loss was {self.first_loss:.4g} at the phase's first step and {self.last_loss:.4g} "
                   f"at the last finite one, the gradient norm went from {self.first_grad:.3g} to "
                   f"{self.last_grad:.3g}")
        if broken is not None:
            history += f", and tensor {broken!r} is no longer finite"
        causes = [f"the updates at learning rate {lr:.3g} blew the model up: lower the learning rate"]
        if self.first_grad and self.last_grad and self.last_grad > EXPLODED * self.first_grad:
            causes[0] = (f"the gradient exploded ({self.last_grad / self.first_grad:.0f}x) at learning rate "
                         f"{lr:.3g}: lower the learning rate")
        if not any(isinstance(m, NORM_TYPES) for m in model.modules()):
            causes.append("the model has no normalization layers (an eval-mode ONNX export folds BatchNorm "
                          "into the convolutions), so it tolerates far smaller learning rates than the "
                          "network it came from")
        chance = math.log(max(self.classes, 2))
        if self.first_loss is not None and self.first_loss > DAMAGED * chance:
            # The model was already far off before this phase's updates: that comes first, the rate second.
            causes = [f"the phase started from a damaged model (loss {self.first_loss:.3g}, chance level is "
                      f"{chance:.3g}): its weights or the stage before this phase already broke it, and a "
                      "lower learning rate can at most postpone the blow-up", *causes[1:]]
        return InvalidConfig(f"{where}{history}. Likely cause: {'; '.join(causes)}")
