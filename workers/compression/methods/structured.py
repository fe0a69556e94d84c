"""Filter pruning shared by `l1` and `tpp`: which channels go (L1 norms, a ratio or a searched FLOPs
target), and the `l1` method. Which groups exist and how they are removed lives in `groups`.
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers.compression.batchnorm_stats import recalibrate_batchnorms
from workers.compression.config import L1Options, TppOptions
from workers.compression.datasets import no_single_sample
from workers.compression.distill import Teacher, distill_report, make_teacher
from workers.compression.errors import InvalidConfig
from workers.compression.measure import count_macs
from workers.compression.methods.base import MethodResult, PruneContext
from workers.compression.methods.groups import (
    Group,
    GroupPlan,
    Member,
    Structure,
    find_groups,
    iter_members,
    only_exact,
    remove,
)
from workers.compression.methods.registry import register
from workers.compression.training import Trainer

__all__ = [
    "FINETUNE_PHASE",
    "Group",
    "GroupPlan",
    "L1Method",
    "Member",
    "Selection",
    "Structure",
    "choose",
    "example_input",
    "find_groups",
    "finetune",
    "importance",
    "iter_members",
    "kept_count",
    "layer_report",
    "macs",
    "plan_from_json",
    "plan_to_json",
    "prunable_structure",
    "recalibrate_after_removal",
    "remove",
    "search_ratio",
    "select",
]

FINETUNE_PHASE = "finetune"
EXTRA_PHASE = "l1_extra"  # budget-matched L1: TPP's regularization steps spent as plain training
_MAX_PR = 0.999  # with "keep at least one filter" this prunes every prunable layer to a single channel
# A pruning ratio is met as measured when it cuts FLOPs at least as much as pruning this share of the
# compute's output channels would: 1.14x at ratio 0.5. Below that the prunable groups hold a sliver of the
# model (an ONNX Swin-B: 1.02x), and the job is refused rather than delivered as a result. (Every model
# of the coverage table that prunes properly reaches 1.34x or more at 0.5.)
MIN_PRUNABLE_SHARE = 0.25


@dataclass(frozen=True)
class Selection:
    """What a structured method removes, and how its target was resolved (for the report)."""

    plans: tuple[GroupPlan, ...]
    report: dict[str, Any]


def example_input(ctx: PruneContext) -> torch.Tensor:
    """Returns a one-sample zero batch (1, *input_shape) on the model's device, for tracing and FLOPs."""
    return torch.zeros((1, *ctx.data.input_shape), device=ctx.device)


def importance(model: nn.Module, group: Group) -> torch.Tensor:
    """Returns each group channel's L1 norm: mean |W| over C_in*kh*kw, summed over the group's layers."""
    modules = dict(model.named_modules())
    score = torch.zeros(group.channels, dtype=torch.float64)
    for member in group.layers:
        weight = modules[member.name].weight.detach()  # (C_out, C_in, kh, kw) or (C_out, C_in)
        per_filter = weight.abs().flatten(1).mean(dim=1).to("cpu", torch.float64)
        score += per_filter[list(member.local)]
    return score


def kept_count(channels: int, ratio: float, round_to: int | None) -> int:
    """Returns how many channels stay: C - ceil(ratio*C), at least one, rounded up to a multiple of
    `round_to` (never above C, so a layer narrower than `round_to` is left as is). Rounding up, unlike
    torch-pruning's rounding down, never removes more than the requested ratio."""
    pruned = math.ceil(ratio * channels - 1e-9)  # the epsilon absorbs float noise like 0.7*10
    kept = max(1, channels - pruned)
    if round_to is not None:
        kept = min(channels, math.ceil(kept / round_to) * round_to)
    return kept


def select(structure: Structure, scores: Sequence[torch.Tensor], ratio: float,
           round_to: int | None) -> tuple[GroupPlan, ...]:
    """Picks, in every group, the positions (channels, or whole heads; the same in every block of a grouped
    conv) with the smallest summed scores (ties: lowest index first)."""
    plans = []
    for group, score in zip(structure.groups, scores, strict=True):
        per_position = score.view(group.repeat, group.positions, group.unit).sum(dim=(0, 2))
        width = group.repeat * group.unit  # channels per position: round the kept channels, not positions
        step = None if round_to is None else round_to // math.gcd(round_to, width)
        kept = kept_count(group.positions, ratio, step)
        order = torch.argsort(per_position, stable=True)
        plans.append(GroupPlan(group, group.expand(order[: group.positions - kept].tolist())))
    return tuple(p for p in plans if p.pruned)


def macs(model: nn.Module, example: torch.Tensor) -> int:
    """Returns Conv/Linear multiply-accumulates with the report's own counter, so a searched target
    is met exactly as report.json measures it (torch-pruning's counter also counts BN and pooling)."""
    return count_macs(model, tuple(example.shape[1:]))


def search_ratio(model: nn.Module, structure: Structure, example: torch.Tensor, target: float,
                 round_to: int | None) -> tuple[float, float]:
    """Bisects the smallest uniform layerwise ratio whose measured FLOPs reduction reaches `target`;
    returns (ratio, measured reduction)."""
    dense = macs(model, example)
    scores = [importance(model, g) for g in structure.groups]
    measured: dict[float, float] = {}

    def reduction(ratio: float) -> float:
        """Measures dense/pruned MACs on a pruned copy."""
        if ratio not in measured:
            pruned = copy.deepcopy(model)
            remove(pruned, select(structure, scores, ratio, round_to), example)
            measured[ratio] = dense / macs(pruned, example)
        return measured[ratio]

    if reduction(_MAX_PR) < target:
        raise InvalidConfig(
            f"flops_reduction {target:g}x is out of reach: pruning every prunable layer down to one channel "
            f"gives {reduction(_MAX_PR):.2f}x ({len(structure.groups)} prunable groups). Lower the target, "
            "or set options.coupled: true to prune residual-coupled layers too.")
    low, high = 0.0, _MAX_PR
    while high - low > 1e-3:
        mid = (low + high) / 2
        low, high = (low, mid) if reduction(mid) >= target else (mid, high)
    return high, reduction(high)


def ratio_shortfall(ratio: float, reduction: float, structure: Structure, method: str) -> str | None:
    """Says why a pruning ratio was not met as measured (its FLOPs reduction falls below what pruning
    `MIN_PRUNABLE_SHARE` of the compute by that ratio gives), or None when it was."""
    floor = 1.0 / (1.0 - MIN_PRUNABLE_SHARE * ratio)
    if reduction >= floor:
        return None
    reasons = Counter(why for _, why in structure.skipped).most_common(2)
    left = "; ".join(f"{n}x {why[:120]}" for why, n in reasons) or "none"
    return (f"pruning_ratio {ratio:g} gives only {reduction:.2f}x fewer FLOPs as measured, below the "
            f"{floor:.2f}x it should reach: the {len(structure.groups)} groups {method} can prune hold too "
            f"little of the model ({len(structure.skipped)} left alone, most often: {left}); set "
            "options.coupled: true, or use an unstructured method (magnitude, weightmom)")


def plan_to_json(plans: Sequence[GroupPlan]) -> str:
    """Serializes the removed channels per group root (travels in checkpoints, goes to the report)."""
    return json.dumps({p.group.root: list(p.pruned) for p in plans}, sort_keys=True)


def plan_from_json(structure: Structure, text: str) -> tuple[GroupPlan, ...]:
    """Rebuilds a plan recorded by `plan_to_json` against the groups of a freshly loaded dense model."""
    by_root = {g.root: g for g in structure.groups}
    recorded: dict[str, list[int]] = json.loads(text)
    if not set(recorded) <= set(by_root):
        missing = sorted(set(recorded) - set(by_root))
        raise RuntimeError(f"the resumed plan names groups the model lacks: {missing}")
    return tuple(GroupPlan(g, tuple(recorded[g.root])) for g in structure.groups if g.root in recorded)


def prunable_structure(model: nn.Module, example: torch.Tensor, options: L1Options | TppOptions, *,
                       method: str, exact: bool) -> Structure:
    """Finds the groups `method` may prune (only the exactly removable ones when `exact`, as TPP needs);
    refuses a model with none (pre-flight and the job share this refusal)."""
    structure = find_groups(model, example, coupled=options.coupled)
    if exact:
        structure = only_exact(structure)
    if not structure.groups:
        reasons = sorted({reason for _, reason in structure.skipped})
        raise InvalidConfig(f"the model has no channel group that {method} can prune ({reasons}); "
                            "try options.coupled: true, or a method with unstructured sparsity")
    return structure


def choose(ctx: PruneContext, options: L1Options | TppOptions, *, exact: bool = False) -> Selection:
    """Finds the groups and the filters to remove (once: a resumed job reuses the recorded plan); `exact`
    keeps only groups whose zeroed channels can be removed without changing the output (TPP)."""
    example = example_input(ctx)
    structure = prunable_structure(ctx.model, example, options, method=ctx.config.method, exact=exact)
    target = ctx.config.target
    report: dict[str, Any] = {
        "groups": len(structure.groups), "coupled_groups": structure.coupling,
        "skipped_groups": [{"root": r, "reason": why} for r, why in structure.skipped],
    }
    recorded, ratio = ctx.trainer.recall("structured.plan"), ctx.trainer.recall("structured.ratio")
    if isinstance(recorded, str) and isinstance(ratio, float):
        plans = plan_from_json(structure, recorded)  # a resumed job: never re-select
    else:
        if target.flops_reduction is not None:
            ratio, _ = search_ratio(ctx.model, structure, example, target.flops_reduction, options.round_to)
        else:
            assert target.pruning_ratio is not None  # the config admits only these two targets here
            ratio = target.pruning_ratio
        scores = [importance(ctx.model, g) for g in structure.groups]
        plans = select(structure, scores, ratio, options.round_to)
        ctx.trainer.remember("structured.plan", plan_to_json(plans))
        ctx.trainer.remember("structured.ratio", ratio)
    pruned = copy.deepcopy(ctx.model)
    remove(pruned, plans, example)
    dense_macs, pruned_macs = macs(ctx.model, example), macs(pruned, example)
    measured = dense_macs / pruned_macs
    if target.pruning_ratio is not None:
        shortfall = ratio_shortfall(ratio, measured, structure, ctx.config.method)
        if shortfall is not None:
            raise InvalidConfig(shortfall)
    report |= {
        "pruning_ratio": ratio,
        "flops_reduction": {"requested": target.flops_reduction, "measured": measured,
                            "macs_before": dense_macs, "macs_after": pruned_macs},
        "removed_channels": json.loads(plan_to_json(plans)),
    }
    return Selection(plans, report)


def layer_report(model: nn.Module, plans: Sequence[GroupPlan]) -> list[dict[str, Any]]:
    """Returns one entry per pruned conv/linear of the dense `model`: kind, channels, kept channels (a layer
    holding each group channel k times counts k times)."""
    modules = dict(model.named_modules())
    entries: dict[str, dict[str, Any]] = {}
    for plan in plans:
        for member in plan.group.layers:
            kind = "linear" if isinstance(modules[member.name], nn.Linear) else "conv"
            entry = entries.setdefault(member.name, {"name": member.name, "kind": kind, "channels": 0,
                                                     "kept_channels": 0})
            entry["channels"] += plan.group.channels
            entry["kept_channels"] += plan.group.channels - len(plan.pruned)
    return list(entries.values())


def finetune(ctx: PruneContext, model: nn.Module, teacher: Teacher | None = None) -> float | None:
    """Finetunes with a fresh optimizer (config.finetune: the spec's step LR by default, cosine if the job
    asks for it), distilling from `teacher` when given; returns the first finetune epoch's accuracy."""
    cfg = ctx.config.finetune
    if cfg.epochs > 0:
        ctx.trainer.fit(model, phase=FINETUNE_PHASE, epochs=cfg.epochs, lr=cfg.lr, schedule=cfg.schedule,
                        optimizer=cfg.optimizer, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                        teacher=teacher)
    first = next((h for h in ctx.trainer.history if h.get("phase") == FINETUNE_PHASE), None)
    return None if first is None else float(first["accuracy"])


def recalibrate_after_removal(model: nn.Module, trainer: Trainer) -> int:
    """Re-estimates the BatchNorm statistics of a pruned model on shuffled training batches (a generator of
    its own, so the finetune's shuffling is unchanged); returns the images used."""
    shuffled = torch.Generator().manual_seed(trainer.seed)
    batches = trainer.data.batches("train", trainer.finetune.batch_size, shuffle=True, generator=shuffled,
                                   device=trainer.device)
    return recalibrate_batchnorms(model, no_single_sample(batches))


def _remembered_accuracy(ctx: PruneContext, key: str, model: nn.Module) -> float:
    """Returns an accuracy kept from an earlier attempt, or evaluates `model` now and keeps it."""
    value = ctx.trainer.recall(key)
    if value is None:
        value = ctx.trainer.evaluate(model)
        ctx.trainer.remember(key, value)
    return float(value)


class L1Method:
    """`l1`: remove the smallest-L1 filters at once, then finetune (the TPP paper's baseline)."""

    name = "l1"
    structured = True

    def run(self, ctx: PruneContext) -> MethodResult:
        """Selects, removes, re-estimates BatchNorm statistics, optionally trains `extra_steps` at constant LR
        (the budget-matched control) and finetunes; reports accuracy right after removal and after one
        finetune epoch."""
        options = L1Options.model_validate(ctx.config.options)
        trainer = ctx.trainer
        teacher = make_teacher(ctx.model, ctx.config.finetune)
        extra = [(EXTRA_PHASE, options.extra_steps / trainer.steps_per_epoch)] if options.extra_steps else []
        trainer.plan([*extra, (FINETUNE_PHASE, float(ctx.config.finetune.epochs))])
        selection = choose(ctx, options)
        layers = layer_report(ctx.model, selection.plans)
        remove(ctx.model, selection.plans, example_input(ctx))
        recalibrated = recalibrate_after_removal(ctx.model, trainer)
        after_removal = _remembered_accuracy(ctx, "l1.accuracy_after_removal", ctx.model)
        if options.extra_steps:
            trainer.fit(ctx.model, phase=EXTRA_PHASE, epochs=0.0, steps=options.extra_steps,
                        lr=options.extra_lr, schedule="constant", teacher=teacher)
        first_epoch = finetune(ctx, ctx.model, teacher)
        report = {"options": options.model_dump(), **selection.report,
                  "accuracy_after_removal": after_removal, "accuracy_after_first_finetune_epoch": first_epoch,
                  "extra_steps": options.extra_steps, "distill": distill_report(ctx.config.finetune),
                  "batchnorm_recalibration_images": recalibrated}
        return MethodResult(model=ctx.model, report=report, layers=layers)


register(L1Method())
