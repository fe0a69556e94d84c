"""`tpp`: Trainability Preserving Pruning (Wang & Fu, ICLR 2023), as in shared/specs/tpp.md.

Select once by L1 -> regularize (Gram term, L2 on pruned filters, L2 on their BN scale/shift; lambda on the
authors' staircase in steps, or grown until the pruned norms are negligible) -> zero the pruned filters group
by group after the ramp -> remove physically (exact: the removed channels are already exactly zero) ->
finetune with a fresh optimizer. The report carries the zero-out cost: accuracy at the end of the ramp minus
accuracy right after the last group was zeroed, both on the validation split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.compression.config import TppOptions
from workers.compression.distill import distill_report, make_teacher
from workers.compression.errors import InvalidConfig
from workers.compression.float_noise import degenerate, excess
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
from workers.compression.methods.tpp_schedule import TppSchedule, make_tpp_schedule
from workers.compression.training import EVAL_BATCH_SIZE, Trainer

__all__ = ["REG_PHASE", "RemovalMismatch", "TppHooks", "TppMethod", "gram_grad", "gram_penalty", "zero_out"]

REG_PHASE = "tpp_reg"
REG_MOMENTUM = 0.9  # the paper's regularization optimizer: SGD, momentum 0.9, constant LR


class RemovalMismatch(RuntimeError):
    """Internal error: removing the zeroed filters changed the logits, so the zero-out is broken."""


def _val_outputs(trainer: Trainer, model: nn.Module,
                 compare_to: Sequence[np.ndarray] = ()) -> tuple[float, list[np.ndarray]]:
    """Returns the validation accuracy and logits per batch (eval mode, the split's fixed order). Given the
    logits from before the removal, raises RemovalMismatch where any moved beyond float32 noise (a random
    EfficientNet's rounding alone flipped 2 of 20 predictions, so accuracy cannot be compared exactly), or
    InvalidConfig where that noise is a sizeable share of the logits (a diverged model, not our removal)."""
    was_training = model.training
    model.eval()
    correct, seen, outputs, worst, noise, scale = 0, 0, [], -np.inf, 0.0, 0.0
    with torch.no_grad():
        batches = trainer.data.batches("val", EVAL_BATCH_SIZE, shuffle=False, device=trainer.device)
        for i, (x, y) in enumerate(batches):
            logits = model(x).float()
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += y.shape[0]
            outputs.append(logits.cpu().numpy())
            if compare_to:
                over, sample_noise = excess(model, x, outputs[-1], compare_to[i])
                worst, noise = max(worst, over), max(noise, sample_noise)
                scale = max(scale, float(np.max(np.abs(outputs[-1]), initial=0.0)))
    model.train(was_training)
    if worst > 0 and degenerate(noise, scale):
        raise InvalidConfig(f"the regularization left a model whose logits (up to {scale:.3g}) float32 "
                            f"rounding alone moves by {noise:.3g}: it diverged, so its pruning cannot be "
                            "checked; lower options.lambda_max or finetune.lr, or use l1")
    if worst > 0:
        raise RemovalMismatch(f"removing the zeroed filters moved the logits by {worst:.3g} beyond the "
                              f"tolerance (float32 noise {noise:.3g}): the zero-out or the channel "
                              "mapping is broken")
    return correct / max(seen, 1), outputs


def _off_mask(keep: torch.Tensor) -> torch.Tensor:
    """Returns 1 - m m^T (N, N): 1 on pruned-kept and pruned-pruned pairs, 0 on kept-kept pairs."""
    return 1.0 - torch.outer(keep, keep)


def gram_penalty(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Returns L_gram = (1/N^2) ||W W^T ⊙ (1 - m m^T)||_F^2 (paper Eq. 3), W reshaped to (N, D)."""
    w = weight.flatten(1)  # (N, D)
    return ((w @ w.T) * _off_mask(keep)).pow(2).sum() / w.shape[0] ** 2


def gram_grad(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Returns dL_gram/dW = (4/N^2) (G ⊙ M) W, shaped like `weight` (G = W W^T and M are symmetric,
    M is binary so M ⊙ M = M), without an autograd graph and in whichever order costs less.

    Row i of (G ⊙ M) W is W_i (W^T W) for a pruned filter and W_i (P^T P) for a kept one (P: the pruned
    rows). Only G's pruned rows A = P W^T are needed: pruned rows are A W and kept rows A[:, kept]^T P,
    N_p D (2N + N_k) multiplies where forming all of G costs 2 N^2 D (VGG's 4096 x 25088 classifier layer
    at PR 0.5: 37% fewer). Wide layers on narrow inputs (EfficientNet-B7's 1x1 expansions, N = 6 D) take
    the D x D products instead, ~(N + N_p) D^2 (they spent 80% of TPP's step time here).
    """
    w = weight.flatten(1)  # (N, D)
    n, d = w.shape
    pruned = keep == 0
    p = w[pruned]  # (N_p, D)
    if p.shape[0] * (3 * n - p.shape[0]) <= (n + p.shape[0]) * d:
        a = p @ w.T  # (N_p, N)
        product = torch.empty_like(w)
        product[pruned] = a @ w
        product[~pruned] = a[:, ~pruned].T @ p
    else:
        product = w @ (p.T @ p)
        product[pruned] = p @ (w.T @ w)
    return ((4.0 / n**2) * product).view_as(weight)


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


def _channel_norms(weight: torch.Tensor, bias: torch.Tensor | None, is_norm: bool) -> torch.Tensor:
    """Returns one norm per output channel (C,): a filter's over C_in*kh*kw, or a BatchNorm channel's
    (scale, shift) pair, the two numbers that decide what a channel with an empty filter outputs."""
    w = weight.detach()
    if not is_norm:
        return w.flatten(1).norm(dim=1) if w.dim() > 1 else w.abs()
    return torch.sqrt(w.pow(2) + (0.0 if bias is None else bias.detach().pow(2)))


def norm_ratio(members: Sequence[_Regularized]) -> float:
    """Returns the largest pruned-channel norm over its layer's mean kept-channel norm, across `members`:
    below ~1e-3 the zero-out no longer changes what the network computes."""
    worst = 0.0
    for weight, bias, rows, keep, is_norm, _ in members:
        norms = _channel_norms(weight, bias, is_norm)
        kept = float(norms[keep.bool()].mean()) if keep.any() else 0.0
        if kept > 0.0:
            worst = max(worst, float(norms[rows].max()) / kept)
    return worst


class TppHooks(StepHooks):
    """The regularization phase on TPP's step schedule (tpp_schedule.py): adds the penalty gradients after
    backward, ends the ramp (authors: at lambda_max; adaptive: once norm_ratio < options.norm_ratio), then
    zeroes the groups (authors: one, several past 50 groups, every zero_out_interval steps; adaptive: all at
    once after a brief hold, which ends the phase)."""

    def __init__(
        self, model: nn.Module, plans: Sequence[GroupPlan], options: TppOptions, *, schedule: TppSchedule,
        on_regularized: Callable[[nn.Module, float], None] | None = None,
        on_zeroed: Callable[[nn.Module], None] | None = None,
    ) -> None:
        self.plans = tuple(plans)
        self.options = options
        self.schedule = schedule
        self.on_regularized = on_regularized
        self.on_zeroed = on_zeroed
        self.step = 0  # optimizer steps done in this phase (own count: restored with the hook's state)
        self.ramp_end: int | None = None if schedule.adaptive else schedule.ramp_steps
        # (weight, bias, pruned row indices, keep mask m (N,), is_norm, gram) per regularized layer or BN.
        self._members: list[_Regularized] = []
        # What decides a pruned channel's output, per group: its BatchNorms' (scale, shift) when it has
        # any (BN rescales whatever is left of the filter, so the filter's own norm says nothing), else
        # its filters. The adaptive ramp stops on these.
        self._judged: list[_Regularized] = []
        for plan in self.plans:
            members: list[_Regularized] = []
            for module, rows, is_norm in iter_members([plan], model):
                weight, bias = _param(module, "weight"), _param(module, "bias")
                if weight is None:  # a BN without affine: nothing to pull (the zero-out still applies)
                    continue
                keep = torch.ones(weight.shape[0], device=weight.device)
                keep[rows] = 0.0
                gram = not is_norm and _shares_inputs(module)
                pruned = torch.tensor(rows, device=weight.device)
                members.append((weight, bias, pruned, keep, is_norm, gram))
            self._members += members
            norms = [m for m in members if m[4]]
            self._judged += norms or members
        self._zero_targets = [_zero_targets(model, plan) for plan in self.plans]

    def lam(self, step: int) -> float:
        """Returns lambda at 0-based step `step` (the schedule's staircase, frozen where the ramp ended)."""
        return self.schedule.lam(step, self.ramp_end if self.schedule.adaptive else None)

    def norm_ratio(self) -> float:
        """Returns the pruned/kept norm ratio of what decides the pruned channels' outputs, now."""
        return norm_ratio(self._judged)

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Adds gram_weight*lambda*dL_gram/dW, lambda*W[p] (and bias) and lambda*gamma_p, lambda*beta_p."""
        lam, opts = self.lam(self.step), self.options
        if lam == 0.0:
            return
        gram_lam = self.schedule.gram_lambda(lam)
        with torch.no_grad():
            for weight, bias, rows, keep, is_norm, gram in self._members:
                if is_norm and not opts.bn_reg:
                    continue
                if gram and opts.gram_weight > 0:
                    term = opts.gram_weight * gram_lam * gram_grad(weight.detach(), keep)
                    _add_grad(weight, bounded_step(term, weight, opts.reg_lr))
                if is_norm or opts.weight_reg:
                    _add_rows(weight, rows, lam)
                    if bias is not None:
                        _add_rows(bias, rows, lam)

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Ends the ramp when its time or goal has come, reports the end of regularization (nothing zeroed
        yet, with the pruned/kept norm ratio), then re-zeroes every group whose turn has come (the
        optimizer's momentum would revive it)."""
        self.step += 1
        schedule = self.schedule
        if self.ramp_end is None and self.step % schedule.update_interval == 0 and self._ramp_done():
            self.ramp_end = self.step
        if self.ramp_end is None:
            return
        if self.step == schedule.regularized_until(self.ramp_end) and self.on_regularized is not None:
            self.on_regularized(model, self.norm_ratio())
        for targets, start in zip(self._zero_targets, schedule.zero_at(self.ramp_end), strict=True):
            if self.step >= start:
                _zero(targets)
        if self.step == schedule.zeroed_by(self.ramp_end) and self.on_zeroed is not None:
            self.on_zeroed(model)

    def _ramp_done(self) -> bool:
        """Tells whether the adaptive ramp has met its goal (every pruned channel negligible) or its cap."""
        cap = self.schedule.max_steps - self.schedule.hold_steps
        return self.norm_ratio() < self.options.norm_ratio or self.step >= cap

    def finished(self) -> bool:
        """Tells whether an adaptive phase has zeroed its groups (an authors' phase runs to its end)."""
        return (self.schedule.adaptive and self.ramp_end is not None
                and self.step >= self.schedule.end(self.ramp_end))

    def state_dict(self) -> dict[str, Any]:
        """Returns the step count and where the ramp ended: they fix lambda and the zero-out of a resumed
        phase."""
        return {"step": self.step, "ramp_end": -1 if self.ramp_end is None else self.ramp_end}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a resumed phase's step count and ramp end."""
        self.step = int(state["step"])
        ramp_end = int(state.get("ramp_end", -1))
        self.ramp_end = None if ramp_end < 0 else ramp_end


WARN_COST = 0.01  # a zero-out that costs more than 1 point of accuracy is a warning


def zero_out_warning(cost: float, ratio: float, options: TppOptions) -> str | None:
    """Returns what to change when the zero-out cost more than 1 point, else None (never a longer authors'
    ramp: the ceiling holds a still-useful channel however long it runs; figures in tpp_schedule.py)."""
    if cost <= WARN_COST:
        return None
    if options.schedule == "authors":
        fix = ("use options.schedule 'adaptive' (it grows lambda until the channels are negligible) or raise "
               "options.lambda_max; a longer ramp (a larger options.scale) lowers the ceiling, no help")
    elif ratio >= options.norm_ratio:  # the ramp hit its cap before the channels were negligible
        fix = "raise options.max_reg_steps (the ramp stopped at its cap); a lower pruning ratio also helps"
    else:
        fix = "lower options.norm_ratio"
    return (f"the TPP zero-out cost {100 * cost:.2f} accuracy points (pruned channels still at {ratio:.2g} "
            f"of the kept channels' norm when zeroed): {fix}")


class TppMethod:
    """`tpp`: select by L1 once, regularize and zero out, remove (exactly), finetune."""

    name = "tpp"
    structured = True

    def _regularize(self, ctx: PruneContext, plans: Sequence[GroupPlan], options: TppOptions,
                    schedule: TppSchedule) -> int:
        """Runs (or resumes) the regularization phase, then completes the zero-out; returns its steps."""
        trainer = ctx.trainer

        def regularized(model: nn.Module, ratio: float) -> None:
            """Keeps the accuracy and norm ratio before the first zeroing (they travel in the checkpoints)."""
            trainer.remember("tpp.accuracy_after_regularization", trainer.evaluate(model))
            trainer.remember("tpp.norm_ratio_at_zero_out", ratio)
            trainer.remember("tpp.lambda_at_zero_out", hooks.lam(hooks.step))
            trainer.remember("tpp.regularization_steps", schedule.end(hooks.ramp_end or hooks.step))

        def zeroed(model: nn.Module) -> None:
            """Keeps the accuracy right after the last group was zeroed."""
            trainer.remember("tpp.accuracy_after_zero_out", trainer.evaluate(model))

        hooks = TppHooks(ctx.model, plans, options, schedule=schedule, on_regularized=regularized,
                         on_zeroed=zeroed)
        trainer.fit(ctx.model, phase=REG_PHASE, stage="pruning", epochs=0.0, steps=schedule.max_steps,
                    lr=options.reg_lr, schedule="constant", momentum=REG_MOMENTUM, hooks=hooks)
        if hooks.step == 0 and schedule.max_steps > 0 and not _is_zeroed(ctx.model, plans):
            # A resumed job whose reg phase had finished must get that phase's final weights back.
            raise RuntimeError("the trainer neither ran nor restored the TPP regularization phase")
        if trainer.recall("tpp.accuracy_after_regularization") is None:  # no ramp ran: zero out at once
            trainer.remember("tpp.accuracy_after_regularization", trainer.evaluate(ctx.model))
            trainer.remember("tpp.norm_ratio_at_zero_out", hooks.norm_ratio())
        zero_out(ctx.model, plans)  # a no-op after the scheduled zero-out
        if trainer.recall("tpp.accuracy_after_zero_out") is None:
            trainer.remember("tpp.accuracy_after_zero_out", trainer.evaluate(ctx.model))
        return int(trainer.recall("tpp.regularization_steps") or 0)

    def _prune(self, ctx: PruneContext, plans: Sequence[GroupPlan], options: TppOptions,
               schedule: TppSchedule) -> dict[str, float]:
        """Regularizes, zeroes and removes; returns the accuracies around it and checks removal was exact."""
        trainer, model = ctx.trainer, ctx.model
        self._regularize(ctx, plans, options, schedule)
        facts = {key: float(trainer.recall(f"tpp.{key}") or 0.0) for key in _FACTS[:4]}
        facts["accuracy_before_removal"], before = _val_outputs(trainer, model)
        remove(model, plans, example_input(ctx))
        facts["accuracy_after_removal"], _ = _val_outputs(trainer, model, compare_to=before)
        for key, value in facts.items():
            trainer.remember(f"tpp.{key}", value)
        return facts

    def run(self, ctx: PruneContext) -> MethodResult:
        """Prunes with TPP and finetunes (distilling from the dense model when finetune.distill is set);
        reports the accuracies around regularization, zero-out and removal, and the zero-out cost."""
        options = TppOptions.model_validate(ctx.config.options)
        trainer, model = ctx.trainer, ctx.model
        teacher = make_teacher(model, ctx.config.finetune)
        if trainer.recall("tpp.accuracy_before_regularization") is None:
            trainer.remember("tpp.accuracy_before_regularization", trainer.evaluate(model))
        # Only groups whose zeroed channels leave the output unchanged: a LayerNorm over the channel (the
        # residual stream of ConvNeXt/ViT) would still count them. Attention heads qualify: zeroed q/k/v
        # rows make the head output zero. Gram and L2 terms go to the layers' rows (whole heads' q/k/v
        # rows for attention), the BN term to the group's norms (BatchNorms only, after this filter).
        selection = choose(ctx, options, exact=True)
        schedule = make_tpp_schedule(options, len(selection.plans))
        trainer.plan([(REG_PHASE, schedule.max_steps / trainer.steps_per_epoch),
                      (FINETUNE_PHASE, float(ctx.config.finetune.epochs))])
        layers = layer_report(model, selection.plans)
        if trainer.recall("tpp.accuracy_after_removal") is None:  # removal not checkpointed: (re)do it
            facts = self._prune(ctx, selection.plans, options, schedule)
        else:  # a resumed finetune: rebuild the pruned structure; Trainer.fit restores the weights
            remove(model, selection.plans, example_input(ctx))
            facts = {key: float(trainer.recall(f"tpp.{key}") or 0.0) for key in _FACTS}
        cost = facts["accuracy_after_regularization"] - facts["accuracy_after_zero_out"]
        warning = zero_out_warning(cost, facts["norm_ratio_at_zero_out"], options)
        if warning is not None:
            trainer.warn(warning)
        first_epoch = finetune(ctx, model, teacher)
        report = {
            "options": options.model_dump(), **selection.report, **facts,
            "zero_out_cost": cost,
            "accuracy_after_first_finetune_epoch": first_epoch,
            "regularization_steps": int(trainer.recall("tpp.regularization_steps") or 0),
            "schedule": _schedule_report(schedule, trainer.recall("tpp.lambda_at_zero_out")),
            "distill": distill_report(ctx.config.finetune),
            "warnings": [] if warning is None else [warning],
        }
        return MethodResult(model=model, report=report, layers=layers)


_FACTS = ("accuracy_before_regularization", "accuracy_after_regularization", "accuracy_after_zero_out",
          "norm_ratio_at_zero_out", "accuracy_before_removal", "accuracy_after_removal")


def _schedule_report(schedule: TppSchedule, lam: float | int | str | None) -> dict[str, Any]:
    """Returns the resolved schedule for the report: mode, increments, ramp, hold, zero-out spacing."""
    return {"mode": "adaptive" if schedule.adaptive else "authors", "lambda_increment": schedule.increment,
            "update_interval": schedule.update_interval, "ramp_steps": schedule.ramp_steps,
            "hold_steps": schedule.hold_steps, "zero_out_interval": schedule.zero_out_interval,
            "groups_per_zero_out": schedule.groups_per_zero_out, "max_steps": schedule.max_steps,
            "lambda_at_zero_out": None if lam is None else float(lam)}


register(TppMethod())
