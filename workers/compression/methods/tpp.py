"""`tpp`: Trainability Preserving Pruning (Wang & Fu, ICLR 2023), as in shared/specs/tpp.md.

Select once by L1 -> regularize (Gram term, L2 on pruned filters, L2 on their BN scale/shift, lambda ramped
then held) -> zero the pruned filters group by group during the hold -> remove physically (exact: the
removed channels are already exactly zero) -> finetune with a fresh optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from workers.compression.config import TppOptions
from workers.compression.methods.base import MethodResult, PruneContext, StepHooks
from workers.compression.methods.registry import register
from workers.compression.methods.structured import (
    FINETUNE_PHASE,
    GroupPlan,
    choose,
    example_input,
    finetune,
    iter_members,
    layer_report,
    remove,
)

__all__ = ["REG_PHASE", "RemovalMismatch", "TppHooks", "TppMethod", "gram_grad", "gram_penalty", "zero_out"]

REG_PHASE = "tpp_reg"
REG_MOMENTUM = 0.9  # the paper's regularization optimizer: SGD, momentum 0.9, constant LR
TOLERANCE = 0.001  # accuracies are fractions: 0.1 point


class RemovalMismatch(RuntimeError):
    """Internal error: removing the zeroed filters changed the accuracy, so the zero-out is broken."""


def _off_mask(keep: torch.Tensor) -> torch.Tensor:
    """Returns 1 - m m^T (N, N): 1 on pruned-kept and pruned-pruned pairs, 0 on kept-kept pairs."""
    return 1.0 - torch.outer(keep, keep)


def gram_penalty(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Returns L_gram = (1/N^2) ||W W^T ⊙ (1 - m m^T)||_F^2 (paper Eq. 3), W reshaped to (N, D)."""
    w = weight.flatten(1)  # (N, D)
    return ((w @ w.T) * _off_mask(keep)).pow(2).sum() / w.shape[0] ** 2


def gram_grad(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Returns dL_gram/dW = (4/N^2) (G ⊙ M) W, shaped like `weight` (G = W W^T and M are symmetric,
    M is binary so M ⊙ M = M): one (N, N) and one (N, D) product instead of an autograd graph."""
    w = weight.flatten(1)  # (N, D)
    return ((4.0 / w.shape[0] ** 2) * ((w @ w.T) * _off_mask(keep)) @ w).view_as(weight)


MAX_GRAM_STEP = 0.25  # of the layer's weight norm, per SGD step (before momentum)


def bounded_step(term: torch.Tensor, weight: torch.Tensor, lr: float) -> torch.Tensor:
    """Scales a Gram gradient down so that one SGD step moves the layer by at most MAX_GRAM_STEP of its norm.

    Deviation from the paper: the Gram term is quartic in W, and its 1/N² makes it strongest on the narrowest
    layers, so an explicit step diverges once lr·gram_weight·λ·(4/N²)·‖W‖² passes ~1 — a 48→2 squeeze-excite
    conv of a random-init TinyNet went from ‖W‖ 19 to an infinite gradient in 3 steps. The bound leaves the
    term's direction and its fixed points alone. On the pretrained CIFAR ResNets it is never reached: their
    prunable convs take at most 0.11‖W‖ (ResNet-20) and 0.07‖W‖ (ResNet-56) per step at λ = 1, PR 0.5-0.9.
    """
    step, limit = lr * float(term.norm()), MAX_GRAM_STEP * float(weight.detach().norm())
    return term if step <= limit or step == 0.0 else term * (limit / step)


_Regularized = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, bool, bool]


def _shares_inputs(module: nn.Module) -> bool:
    """Tells whether every filter of a layer reads the same inputs, which is what the Gram term is about.

    Deviation from the paper (whose networks have none): depthwise and grouped convolutions get the L2
    pull and the zero-out but no Gram term. Their filters read different channels, so the correlation of
    two flattened filters says nothing about the layer's Jacobian, which the term is meant to keep
    well-conditioned.
    """
    return not isinstance(module, nn.modules.conv._ConvNd) or module.groups == 1


def _param(module: nn.Module, name: str) -> torch.Tensor | None:
    """Returns the module's tensor `name` (weight, bias, running_mean) or None when it has none."""
    tensor = getattr(module, name, None)
    return tensor if isinstance(tensor, torch.Tensor) else None


def _add_grad(param: torch.Tensor, term: torch.Tensor) -> None:
    """Adds `term` to `param.grad` (creating it when the loss did not reach `param`)."""
    if param.grad is None:
        param.grad = term.clone()
    else:
        param.grad.add_(term)


def _add_rows(param: torch.Tensor, rows: torch.Tensor, scale: float) -> None:
    """Adds scale * param[rows] to the gradient of those rows only (the L2 pull of pruned channels)."""
    term = torch.zeros_like(param)
    term[rows] = scale * param.detach()[rows]
    _add_grad(param, term)


def _zero_targets(model: nn.Module, plan: GroupPlan) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Returns (tensor, pruned rows) for a group's filters, biases, BN scale/shift and BN running mean:
    with all of them zero the channel outputs 0 everywhere (also through a BN without affine)."""
    targets = []
    for module, rows, is_norm in iter_members([plan], model):
        for name in ("weight", "bias", "running_mean") if is_norm else ("weight", "bias"):
            tensor = _param(module, name)
            if tensor is not None:
                targets.append((tensor, torch.tensor(rows, device=tensor.device)))
    return targets


@torch.no_grad()
def _zero(targets: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Sets the given rows to exactly zero, in place (so optimizer and checkpoint references stay valid)."""
    for tensor, rows in targets:
        tensor[rows] = 0.0


def zero_out(model: nn.Module, plans: Sequence[GroupPlan]) -> None:
    """Zeroes every planned group (idempotent)."""
    for plan in plans:
        _zero(_zero_targets(model, plan))


def _is_zeroed(model: nn.Module, plans: Sequence[GroupPlan]) -> bool:
    """Tells whether every planned filter, bias and BN scale/shift is exactly zero."""
    return all(not tensor[rows].any() for plan in plans for tensor, rows in _zero_targets(model, plan))


class TppHooks(StepHooks):
    """The regularization phase: adds TPP's penalty gradients after backward, zeroes groups on schedule.

    The paper's staircase (lambda += 1e-4 every 10 iterations up to 1, then 10,000 more iterations) becomes
    a straight ramp over `reg_steps` and a hold for the rest: the same shape, a budget set in epochs.
    """

    def __init__(
        self, model: nn.Module, plans: Sequence[GroupPlan], options: TppOptions, *, reg_steps: int,
        total_steps: int, on_ramp_end: Callable[[nn.Module], None] | None = None,
    ) -> None:
        self.plans = tuple(plans)
        self.options = options
        self.reg_steps = reg_steps
        self.on_ramp_end = on_ramp_end
        self.step = 0  # optimizer steps done in this phase (own count: restored with the hook's state)
        # (weight, bias, pruned row indices, keep mask m (N,), is_norm, gram) per regularized layer or BN.
        self._members: list[_Regularized] = []
        for module, rows, is_norm in iter_members(self.plans, model):
            weight, bias = _param(module, "weight"), _param(module, "bias")
            if weight is None:  # a BN without affine: nothing to pull (the zero-out still applies)
                continue
            keep = torch.ones(weight.shape[0], device=weight.device)
            keep[rows] = 0.0
            gram = not is_norm and _shares_inputs(module)
            pruned = torch.tensor(rows, device=weight.device)
            self._members.append((weight, bias, pruned, keep, is_norm, gram))
        # Group i is zeroed from step zero_at[i] on: spread over the stabilization steps, all done before
        # the phase ends; with no stabilization every group is zeroed at the last step.
        hold = total_steps - reg_steps
        count = max(1, len(self.plans))
        self.zero_at = [min(reg_steps + i * hold // count, max(total_steps - 1, 0)) for i in range(count)]
        self._zero_targets = [_zero_targets(model, plan) for plan in self.plans]

    def lam(self, step: int) -> float:
        """Returns lambda at 0-based step `step`: 0 -> lambda_max linearly over the ramp, then held."""
        if step >= self.reg_steps:
            return self.options.lambda_max
        return self.options.lambda_max * step / self.reg_steps

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Adds gram_weight*lambda*dL_gram/dW, lambda*W[p] (and bias) and lambda*gamma_p, lambda*beta_p."""
        lam, opts = self.lam(self.step), self.options
        if lam == 0.0:
            return
        with torch.no_grad():
            for weight, bias, rows, keep, is_norm, gram in self._members:
                if is_norm and not opts.bn_reg:
                    continue
                if gram and opts.gram_weight > 0:
                    term = opts.gram_weight * lam * gram_grad(weight.detach(), keep)
                    _add_grad(weight, bounded_step(term, weight, opts.reg_lr))
                if is_norm or opts.weight_reg:
                    _add_rows(weight, rows, lam)
                    if bias is not None:
                        _add_rows(bias, rows, lam)

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Re-zeroes every group whose time has come (the optimizer's momentum would revive it)."""
        done = self.step
        self.step += 1
        for targets, start in zip(self._zero_targets, self.zero_at, strict=False):
            if done >= start:
                _zero(targets)
        if self.step == self.reg_steps and self.on_ramp_end is not None:
            self.on_ramp_end(model)  # lambda at its ceiling, nothing zeroed yet

    def state_dict(self) -> dict[str, Any]:
        """Returns the step count: it fixes lambda and the zero-out schedule of a resumed phase."""
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a resumed phase's step count."""
        self.step = int(state["step"])


class TppMethod:
    """`tpp`: select by L1 once, regularize and zero out, remove (exactly), finetune."""

    name = "tpp"
    structured = True

    def _regularize(self, ctx: PruneContext, plans: Sequence[GroupPlan], options: TppOptions,
                    reg_steps: int, total_steps: int) -> None:
        """Runs (or resumes) the regularization phase, then completes the zero-out."""
        trainer = ctx.trainer

        def ramp_end(model: nn.Module) -> None:
            """Keeps the accuracy at the end of the ramp (it travels in the checkpoints)."""
            trainer.remember("tpp.accuracy_after_regularization", trainer.evaluate(model))

        hooks = TppHooks(ctx.model, plans, options, reg_steps=reg_steps, total_steps=total_steps,
                         on_ramp_end=ramp_end)
        if total_steps > 0:
            trainer.fit(ctx.model, phase=REG_PHASE, stage="pruning",
                        epochs=options.reg_epochs + options.stabilize_epochs, lr=options.reg_lr,
                        schedule="constant", momentum=REG_MOMENTUM, hooks=hooks)
            if hooks.step == 0 and not _is_zeroed(ctx.model, plans):
                # A resumed job whose reg phase had finished must get that phase's final weights back.
                raise RuntimeError("the trainer neither ran nor restored the TPP regularization phase")
        zero_out(ctx.model, plans)  # a no-op after the scheduled zero-out; the whole zero-out without steps

    def _prune(self, ctx: PruneContext, plans: Sequence[GroupPlan], options: TppOptions,
               reg_steps: int, total_steps: int) -> dict[str, float]:
        """Regularizes, zeroes and removes; returns the accuracies around it and checks removal was exact."""
        trainer, model = ctx.trainer, ctx.model
        self._regularize(ctx, plans, options, reg_steps, total_steps)
        before_reg = float(trainer.recall("tpp.accuracy_before_regularization") or 0.0)
        after_reg = trainer.recall("tpp.accuracy_after_regularization")  # None without a ramp
        facts = {
            "accuracy_before_regularization": before_reg,
            "accuracy_after_regularization": before_reg if after_reg is None else float(after_reg),
            "accuracy_before_removal": trainer.evaluate(model),
        }
        remove(model, plans, example_input(ctx))
        facts["accuracy_after_removal"] = trainer.evaluate(model)
        before, after = facts["accuracy_before_removal"], facts["accuracy_after_removal"]
        if abs(before - after) > TOLERANCE:
            raise RemovalMismatch(f"removing the zeroed filters moved accuracy from {before:.4f} to "
                                  f"{after:.4f}: the zero-out or the channel mapping is broken")
        for key, value in facts.items():
            trainer.remember(f"tpp.{key}", value)
        return facts

    def run(self, ctx: PruneContext) -> MethodResult:
        """Prunes with TPP and finetunes; reports accuracy before/after regularization and removal."""
        options = TppOptions.model_validate(ctx.config.options)
        trainer, model = ctx.trainer, ctx.model
        reg_epochs = options.reg_epochs + options.stabilize_epochs
        trainer.plan([(REG_PHASE, reg_epochs), (FINETUNE_PHASE, float(ctx.config.finetune.epochs))])
        # The same rounding as Trainer.fit: fractional epochs round up to whole steps.
        reg_steps = math.ceil(options.reg_epochs * trainer.steps_per_epoch - 1e-9)
        total_steps = math.ceil(reg_epochs * trainer.steps_per_epoch - 1e-9)
        if trainer.recall("tpp.accuracy_before_regularization") is None:
            trainer.remember("tpp.accuracy_before_regularization", trainer.evaluate(model))
        # Only groups whose zeroed channels leave the output unchanged: a LayerNorm over the channel (the
        # residual stream of ConvNeXt/ViT) would still count them. Attention heads qualify: zeroed q/k/v
        # rows make the head output zero. Gram and L2 terms go to the layers' rows (whole heads' q/k/v
        # rows for attention), the BN term to the group's norms (BatchNorms only, after this filter).
        selection = choose(ctx, options, exact=True)
        layers = layer_report(model, selection.plans)
        keys = ("accuracy_before_regularization", "accuracy_after_regularization",
                "accuracy_before_removal", "accuracy_after_removal")
        if trainer.recall("tpp.accuracy_after_removal") is None:  # removal not checkpointed: (re)do it
            facts = self._prune(ctx, selection.plans, options, reg_steps, total_steps)
        else:  # a resumed finetune: rebuild the pruned structure; Trainer.fit restores the weights
            remove(model, selection.plans, example_input(ctx))
            facts = {key: float(trainer.recall(f"tpp.{key}") or 0.0) for key in keys}
        first_epoch = finetune(ctx, model)
        report = {
            "options": options.model_dump(), **selection.report, **facts,
            "accuracy_after_first_finetune_epoch": first_epoch,
            "regularization_steps": {"total": total_steps, "ramp": reg_steps,
                                     "stabilize": total_steps - reg_steps,
                                     "steps_per_epoch": trainer.steps_per_epoch},
        }
        return MethodResult(model=model, report=report, layers=layers)


register(TppMethod())
