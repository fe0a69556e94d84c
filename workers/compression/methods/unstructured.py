"""Gradual unstructured pruning: WeightMom and its baseline `magnitude`, one code path (specs/weightmom.md).

`magnitude` is WeightMom with beta = 0 (the score is |w| itself) and gamma = 1 (global thresholding on it).
The whole run is one training phase: masks shrink on the cubic schedule up to t_end, then stay frozen
while training goes on (the finetune tail).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from workers.compression.config import FinetuneConfig, MagnitudeOptions, WeightMomOptions
from workers.compression.distill import distill_report, make_teacher
from workers.compression.measure import count_params
from workers.compression.methods.base import MethodResult, PruneContext, StepHooks
from workers.compression.methods.masks import PrunableLayer, global_removal_counts, select_prunable
from workers.compression.methods.quota import layer_quotas
from workers.compression.methods.registry import register
from workers.compression.methods.schedule import Schedule, make_schedule
from workers.compression.report import default_layers

__all__ = [
    "MAGNITUDE", "MIN_KEEP", "WEIGHTMOM", "GradualPruningHooks", "UnstructuredMethod", "resolve_beta_gamma",
    "resolve_t_end",
]

MIN_KEEP = 1  # weights every prunable layer keeps, so no layer cuts the network in two
PHASE = "gradual"
ACCURACY_KEY = "accuracy_after_last_prune"
HONEST_NOTE = (
    "Unstructured zeros do not make a dense runtime faster: they shrink the compressed model "
    "(compare onnx_zstd_bytes) and can be served by sparse-aware runtimes."
)


FIRST_LR_DROP = 0.5  # training.learning_rate's step schedule: x0.1 at 50% of the steps
COSINE_T_END = 0.6  # specs/weightmom.md: the ramp ends at 60% of the run (a cosine LR has no drop)


def resolve_t_end(options: MagnitudeOptions, finetune: FinetuneConfig, total_steps: int) -> float:
    """Returns where the pruning window closes, as a fraction of the run: options.t_end, or the first LR drop
    of a step schedule (exactly at its step, so every event trains at the full LR), or 60% of a cosine run."""
    if options.t_end is not None:
        return options.t_end
    if finetune.schedule == "step" and total_steps > 0:
        return math.floor(total_steps * FIRST_LR_DROP) / total_steps
    return COSINE_T_END


def resolve_beta_gamma(options: MagnitudeOptions, interval: int) -> tuple[float, float]:
    """Returns (beta, gamma): magnitude is (0, 1); WeightMom's beta defaults to 1 - 1/interval (as used)."""
    if isinstance(options, WeightMomOptions):
        beta = options.beta if options.beta is not None else 1.0 - 1.0 / interval
        return beta, options.gamma
    return 0.0, 1.0


class GradualPruningHooks(StepHooks):
    """Masks gradients and weights around every step, tracks m = EMA of |w|, and prunes on the schedule."""

    def __init__(
        self, layers: list[PrunableLayer], *, schedule: Schedule, beta: float, gamma: float,
        min_keep: int = MIN_KEEP, on_last_event: Callable[[nn.Module], None] | None = None,
    ) -> None:
        """Takes the prunable layers (dense, scores at |w|) and how to prune them."""
        self.layers = layers
        self.schedule = schedule
        self.beta = beta
        self.gamma = gamma
        self.min_keep = min_keep
        self.on_last_event = on_last_event
        self.step = 0  # optimizer steps seen; own counter, so it resumes with the masks it belongs to
        self.events_done = 0

    def after_backward(self, model: nn.Module, step: int) -> None:
        """Zeroes gradients of pruned weights, so momentum and Adam moments stay zero there too."""
        for layer in self.layers:
            if layer.weight.grad is not None:
                layer.weight.grad.masked_fill_(layer.pruned, 0.0)

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Re-applies the masks (weight decay and momentum must not revive a weight), updates m, and prunes
        when this step is a scheduled event."""
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.masked_fill_(layer.pruned, 0.0)
                if self.step < self.schedule.t_end_step:  # scores are dead weight once masks are frozen
                    layer.score.mul_(self.beta).add_(layer.weight.abs(), alpha=1.0 - self.beta)
        self.step += 1
        if self.schedule.is_event(self.step):
            self.prune_to(self.schedule.sparsity_at(self.step), optimizer)
            self.events_done += 1
            if self.step == self.schedule.t_end_step and self.on_last_event is not None:
                self.on_last_event(model)

    def prune_to(self, sparsity: float, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Removes weights until round(sparsity * prunable) are pruned (count-based, so the target is met to
        within one weight); returns how many it removed. Quotas per layer from relative sparsity."""
        total = sum(layer.weight.numel() for layer in self.layers)
        ceiling = total - sum(min(self.min_keep, layer.weight.numel()) for layer in self.layers)
        alive = [layer.alive for layer in self.layers]
        remove = min(round(sparsity * total), ceiling) - (total - sum(alive))
        if remove <= 0:
            return 0
        quotas = layer_quotas(
            global_removal_counts(self.layers, remove), alive, gamma=self.gamma, min_keep=self.min_keep,
        )
        for layer, quota in zip(self.layers, quotas, strict=True):
            layer.remove_smallest(quota, optimizer)
        return remove

    def state_dict(self) -> dict[str, Any]:
        """Returns masks, scores (on CPU, so a checkpoint loads anywhere) and counters."""
        return {
            "pruned": {layer.name: layer.pruned.cpu() for layer in self.layers},
            "score": {layer.name: layer.score.cpu() for layer in self.layers},
            "step": self.step,
            "events_done": self.events_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores masks, scores and counters of a checkpoint taken by the same job's hooks."""
        names = {layer.name for layer in self.layers}
        if set(state["pruned"]) != names or set(state["score"]) != names:
            raise ValueError("checkpoint masks do not name the same prunable layers as this model")
        for layer in self.layers:
            layer.pruned.copy_(state["pruned"][layer.name])
            layer.score.copy_(state["score"][layer.name])
        self.step = int(state["step"])
        self.events_done = int(state["events_done"])


class UnstructuredMethod:
    """A registered gradual-pruning method; `magnitude` and `weightmom` differ only in their options."""

    structured = False

    def __init__(self, name: str) -> None:
        """Names the method; its options model (config.METHOD_OPTIONS[name]) decides beta and gamma."""
        self.name = name

    def run(self, ctx: PruneContext) -> MethodResult:
        """Trains for finetune.epochs with gradual pruning up to t_end and frozen masks after, recording the
        accuracy right after the last event; with zero epochs prunes one-shot to the target."""
        options: MagnitudeOptions = ctx.config.method_options()
        target = ctx.config.target.sparsity
        assert target is not None  # config.METHOD_TARGETS allows only a sparsity target here
        trainer, finetune = ctx.trainer, ctx.config.finetune
        teacher = make_teacher(ctx.model, finetune)
        layers = select_prunable(ctx.model, options.exclude_layers)
        total_steps = math.ceil(finetune.epochs * trainer.steps_per_epoch)
        t_end = resolve_t_end(options, finetune, total_steps)

        def record(model: nn.Module) -> None:
            """Keeps the accuracy right after the last pruning event across resumed attempts."""
            trainer.remember(ACCURACY_KEY, trainer.evaluate(model))

        schedule = make_schedule(
            total_steps=total_steps, t0=min(options.t0, t_end), t_end=t_end, interval=options.interval,
            final_sparsity=target,
        )
        beta, gamma = resolve_beta_gamma(options, schedule.interval)
        hooks = GradualPruningHooks(layers, schedule=schedule, beta=beta, gamma=gamma, on_last_event=record)
        trainer.plan([(PHASE, finetune.epochs)])
        if total_steps == 0:
            hooks.prune_to(target)
            record(ctx.model)
        else:
            finished_before = trainer.phase_done(PHASE)
            # On a resumed, finished phase this only restores the final (pruned) weights.
            trainer.fit(
                ctx.model, phase=PHASE, epochs=finetune.epochs, lr=finetune.lr, schedule=finetune.schedule,
                optimizer=finetune.optimizer, momentum=finetune.momentum, weight_decay=finetune.weight_decay,
                hooks=hooks, stage="pruning", teacher=teacher,
            )
            if not finished_before and hooks.step != total_steps:
                raise RuntimeError(f"the trainer ran {hooks.step} steps; the schedule planned {total_steps}")
        return self._result(ctx, hooks, layers, options, t_end)

    def _result(
        self, ctx: PruneContext, hooks: GradualPruningHooks, layers: list[PrunableLayer],
        options: MagnitudeOptions, t_end: float,
    ) -> MethodResult:
        """Builds the report from the model's weights as they are (a resumed, finished job has no masks)."""
        prunable = {layer.name for layer in layers}
        stats = [{**row, "prunable": row["name"] in prunable} for row in default_layers(ctx.model)]
        prunable_params = sum(s["params"] for s in stats if s["prunable"])  # minus exclude_layers
        prunable_nonzero = sum(s["nonzero"] for s in stats if s["prunable"])
        counts = count_params(ctx.model)
        params, nonzero = counts.params, counts.nonzero_params
        schedule = hooks.schedule
        report = {
            "beta": hooks.beta, "gamma": hooks.gamma, "interval": schedule.interval,
            "interval_requested": options.interval, "t0": options.t0, "t_end": t_end,
            "t0_step": schedule.t0_step, "t_end_step": schedule.t_end_step,
            "total_steps": schedule.total_steps,
            "exclude_layers": list(options.exclude_layers), "min_keep": hooks.min_keep,
            "target_sparsity": schedule.final_sparsity,
            "sparsity_prunable": 1.0 - prunable_nonzero / prunable_params,
            "sparsity_all": 1.0 - nonzero / params,
            "compression_ratio": params / max(nonzero, 1),
            "params": params, "nonzero_params": nonzero, "prunable_params": prunable_params,
            "accuracy_after_last_prune": ctx.trainer.recall(ACCURACY_KEY),
            "pruning_events": len(schedule.event_steps),
            "distill": distill_report(ctx.config.finetune),
            "note": HONEST_NOTE,
        }
        return MethodResult(model=ctx.model, report=report, layers=stats)


MAGNITUDE = UnstructuredMethod("magnitude")
WEIGHTMOM = UnstructuredMethod("weightmom")
register(MAGNITUDE)
register(WEIGHTMOM)
