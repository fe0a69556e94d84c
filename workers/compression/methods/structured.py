"""Filter pruning shared by `l1` and `tpp`: which channel groups, which filters, physical removal — and `l1`.

Groups come from torch-pruning's dependency graph, so the same code serves the zoo (ResNets with option-A
shortcuts, VGGs) and ONNX-imported graphs whose module names mean nothing. A group is every tensor that
loses a channel together (conv/linear out-channels, the following BN, the next layer's in-channels).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.ops import OPTYPE

from workers.compression.config import L1Options
from workers.compression.errors import InvalidConfig, UnsupportedOp
from workers.compression.measure import count_macs
from workers.compression.methods.base import MethodResult, PruneContext
from workers.compression.methods.registry import register

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
    "remove",
    "search_ratio",
    "select",
]

FINETUNE_PHASE = "finetune"
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # transposed convs are left alone
_MAX_PR = 0.999  # with "keep at least one filter" this prunes every prunable layer to a single channel


@dataclass(frozen=True)
class Member:
    """A module that loses the group's channels: `local[c]` is its own index of the group's channel c."""

    name: str
    local: tuple[int, ...]

    def pruned(self, channels: Sequence[int]) -> list[int]:
        """Returns this module's own indices of the group channels `channels`."""
        return sorted(self.local[c] for c in channels)


@dataclass(frozen=True)
class Group:
    """One prunable group; channel c means channel c of `root`, the first member layer in model order."""

    root: str
    channels: int
    layers: tuple[Member, ...]  # convs/linears whose filters (out-channels) go
    norms: tuple[Member, ...]  # BatchNorms whose scale/shift/statistics go
    coupled: bool  # joined through a residual add (or another op mixing two feature maps)


@dataclass(frozen=True)
class Structure:
    """The groups a method may prune, and the groups left alone with the reason (for the report)."""

    groups: tuple[Group, ...]
    skipped: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class GroupPlan:
    """The channels (group indexing, ascending) removed from one group."""

    group: Group
    pruned: tuple[int, ...]


@dataclass(frozen=True)
class Selection:
    """What a structured method removes, and how its target was resolved (for the report)."""

    plans: tuple[GroupPlan, ...]
    report: dict[str, Any]


def example_input(ctx: PruneContext) -> torch.Tensor:
    """Returns a one-sample zero batch (1, *input_shape) on the model's device, for tracing and FLOPs."""
    return torch.zeros((1, *ctx.data.input_shape), device=ctx.device)


def _trace(model: nn.Module, example: torch.Tensor) -> Any:
    """Builds torch-pruning's dependency graph of `model` (it needs autograd; it leaves the model in eval)."""
    was_training = model.training
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    finally:
        model.train(was_training)


def _edge_layers(dg: Any) -> set[nn.Module]:
    """Returns the first convs (no conv/linear upstream) and the classifiers (no conv/linear downstream)."""

    def reaches_layer(start: Any, forward: bool) -> bool:
        """Tells whether a conv/linear lies upstream (or downstream) of `start`."""
        stack, seen = list(start.outputs if forward else start.inputs), set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if isinstance(node.module, _LAYERS):
                return True
            stack.extend(node.outputs if forward else node.inputs)
        return False

    edges: set[nn.Module] = set()
    for module, node in dg.module2node.items():
        if not isinstance(module, _LAYERS):
            continue
        first_conv = not isinstance(module, nn.Linear) and not reaches_layer(node, forward=False)
        if first_conv or not reaches_layer(node, forward=True):
            edges.add(module)
    return edges


def _pads_channels(node: Any, rank: int) -> bool:
    """Tells whether `node` is a constant pad of the channel dim (option-A shortcut), which torch-pruning
    takes for an element-wise op: the channels on its two sides do not line up.

    Deviation (also for `coupled: true`): such groups are left alone rather than given a custom pruner.
    Correctly modelled, a pruned stage-2 channel still receives its stage-1 channel through the shortcut,
    so TPP's zero-out would not be exact unless both stages lose it; and the zoo's residual stream starts
    at the stem conv, which is never pruned. The paper's default prunes none of these channels anyway.
    """
    grad_fn = node.grad_fn
    if grad_fn is None or "ConstantPadNd" not in grad_fn.name():
        return False
    pad = tuple(grad_fn._saved_pad)  # pairs from the last dim backwards: dim 1 is pair rank-2
    return any(pad[2 * (rank - 2): 2 * (rank - 2) + 2])


def _classify(dg: Any, tp_group: Any, names: dict[nn.Module, str], order: dict[str, int],
              edges: set[nn.Module], rank: int) -> Group | set[str]:
    """Turns a torch-pruning group into a `Group`, or returns why it must be left alone."""
    layers: list[tuple[str, list[int], list[int]]] = []  # (name, own indices, tp-root indices)
    norms: list[tuple[str, list[int], list[int]]] = []
    problems: set[str] = set()
    coupled = False
    for item in tp_group:
        node, module, idxs = item.dep.target, item.dep.target.module, list(item.idxs)
        if node.type == OPTYPE.ELEMENTWISE and sum(i.type != OPTYPE.PARAMETER for i in node.inputs) > 1:
            coupled = True  # two feature maps meet (residual add, gating): their channels go together
        if _pads_channels(node, rank):
            problems.add("unmodelled channel mapping (channel padding, e.g. an option-A shortcut)")
        if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups < module.out_channels:
            problems.add("unmodelled channel mapping (grouped conv)")
        if not dg.is_out_channel_pruning_fn(item.dep.handler):
            in_channels = dg.get_in_channels(module) if isinstance(module, nn.Module) else None
            if in_channels is not None and max(idxs) >= in_channels:
                problems.add("unmodelled channel mapping (index out of range)")
            continue
        if module in edges:
            problems.add("holds the first conv or the classifier")
        if isinstance(module, (*_LAYERS, nn.modules.batchnorm._BatchNorm)):
            # The group lists every channel once: each member must be covered exactly, one to one.
            if sorted(idxs) != list(range(dg.get_out_channels(module))):
                problems.add("unmodelled channel mapping (partial coverage)")
            target = layers if isinstance(module, _LAYERS) else norms
            target.append((names[module], idxs, list(item.root_idxs)))
    if coupled:
        problems.add("coupled through a residual add")
    if problems - {"coupled through a residual add"} or not layers:
        return problems or {"no conv/linear in the group"}
    layers.sort(key=lambda m: order[m[0]])
    root_name, root_own, root_tp = layers[0]
    to_tp = dict(zip(root_own, root_tp, strict=True))  # root's own channel -> tp-root channel

    def member(entry: tuple[str, list[int], list[int]]) -> Member:
        """Re-indexes a member by the root's channels."""
        name, own, tp_root = entry
        by_tp = dict(zip(tp_root, own, strict=True))
        return Member(name, tuple(by_tp[to_tp[c]] for c in range(len(root_own))))

    return Group(root_name, len(root_own), tuple(map(member, layers)), tuple(map(member, norms)), coupled)


def find_groups(model: nn.Module, example: torch.Tensor, *, coupled: bool) -> Structure:
    """Finds the prunable groups: all conv/linear groups but the first conv and the classifier; groups
    coupled through adds only when `coupled` (the paper's default leaves them alone)."""
    dg = _trace(model, example)
    names = {module: name for name, module in model.named_modules()}
    order = {name: i for i, name in enumerate(names.values())}
    edges = _edge_layers(dg)
    groups: list[Group] = []
    skipped: list[tuple[str, str]] = []
    for tp_group in dg.get_all_groups(root_module_types=_LAYERS):
        found = _classify(dg, tp_group, names, order, edges, example.dim())
        if isinstance(found, set):
            skipped.append((names.get(tp_group[0].dep.target.module, "?"), "; ".join(sorted(found))))
        elif found.coupled and not coupled:
            skipped.append((found.root, "coupled through a residual add (options.coupled: true prunes it)"))
        else:
            groups.append(found)
    groups.sort(key=lambda g: order[g.root])
    return Structure(tuple(groups), tuple(sorted(skipped)))


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
    """Picks, in every group, the channels with the smallest scores (ties: lowest index first)."""
    plans = []
    for group, score in zip(structure.groups, scores, strict=True):
        kept = kept_count(group.channels, ratio, round_to)
        order = torch.argsort(score, stable=True)
        plans.append(GroupPlan(group, tuple(sorted(order[: group.channels - kept].tolist()))))
    return tuple(p for p in plans if p.pruned)


def _output_shape(model: nn.Module, example: torch.Tensor) -> tuple[int, ...]:
    """Runs a batch of two in eval mode (BN statistics untouched) and returns the output's shape."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return tuple(model(example.expand(2, *example.shape[1:])).shape)
    finally:
        model.train(was_training)


def remove(model: nn.Module, plans: Sequence[GroupPlan], example: torch.Tensor) -> None:
    """Removes the planned channels physically: smaller convs/BNs/linears, consumers lose their inputs."""
    dg = _trace(model, example)
    expected = _output_shape(model, example)
    modules = dict(model.named_modules())
    for plan in plans:
        root = modules[plan.group.root]
        prune_out = dg.get_pruner_of_module(root).prune_out_channels
        dg.get_pruning_group(root, prune_out, list(plan.pruned)).prune(record_history=False)
    try:
        shape = _output_shape(model, example)
    except RuntimeError as exc:  # shape errors inside the user's graph
        shape, reason = (), str(exc).splitlines()[0]
    else:
        reason = f"it now outputs {shape} instead of {expected}"
    if shape != expected:
        raise UnsupportedOp(
            f"removing channels broke the model ({reason}): the graph probably fixes a channel count in a "
            "constant, such as a Reshape to a fixed shape. Flatten with a dynamic shape "
            "(torch.flatten(x, 1)) before exporting, or use an unstructured method (magnitude, weightmom)")


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


def choose(ctx: PruneContext, options: L1Options) -> Selection:
    """Finds the groups and the filters to remove (once: a resumed job reuses the recorded plan)."""
    example = example_input(ctx)
    structure = find_groups(ctx.model, example, coupled=options.coupled)
    if not structure.groups:
        reasons = sorted({reason for _, reason in structure.skipped})
        raise InvalidConfig(f"the model has no channel group that {ctx.config.method} can prune ({reasons}); "
                            "try options.coupled: true, or a method with unstructured sparsity")
    target = ctx.config.target
    report: dict[str, Any] = {"skipped_groups": [{"root": r, "reason": why} for r, why in structure.skipped]}
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
    report |= {
        "pruning_ratio": ratio,
        "flops_reduction": {"requested": target.flops_reduction, "measured": dense_macs / pruned_macs,
                            "macs_before": dense_macs, "macs_after": pruned_macs},
        "removed_channels": json.loads(plan_to_json(plans)),
    }
    return Selection(plans, report)


def layer_report(model: nn.Module, plans: Sequence[GroupPlan]) -> list[dict[str, Any]]:
    """Returns one entry per pruned conv/linear of the dense `model`: kind, channels, kept channels."""
    modules = dict(model.named_modules())
    return [
        {"name": m.name, "kind": "linear" if isinstance(modules[m.name], nn.Linear) else "conv",
         "channels": p.group.channels, "kept_channels": p.group.channels - len(p.pruned)}
        for p in plans for m in p.group.layers
    ]


def finetune(ctx: PruneContext, model: nn.Module) -> float | None:
    """Finetunes with a fresh optimizer (config.finetune: the spec's step LR by default, cosine if the job
    asks for it); returns the first finetune epoch's accuracy."""
    cfg = ctx.config.finetune
    if cfg.epochs > 0:
        ctx.trainer.fit(model, phase=FINETUNE_PHASE, epochs=cfg.epochs, lr=cfg.lr, schedule=cfg.schedule,
                        optimizer=cfg.optimizer, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    first = next((h for h in ctx.trainer.history if h.get("phase") == FINETUNE_PHASE), None)
    return None if first is None else float(first["accuracy"])


def iter_members(plans: Sequence[GroupPlan], model: nn.Module) -> Iterator[tuple[nn.Module, list[int], bool]]:
    """Yields (module, its own pruned indices, is_norm) for every layer and BN the plans touch."""
    modules = dict(model.named_modules())
    for plan in plans:
        for member in plan.group.layers:
            yield modules[member.name], member.pruned(plan.pruned), False
        for member in plan.group.norms:
            yield modules[member.name], member.pruned(plan.pruned), True


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
        """Selects, removes and finetunes; reports accuracy right after removal and after one epoch."""
        options = L1Options.model_validate(ctx.config.options)
        ctx.trainer.plan([(FINETUNE_PHASE, float(ctx.config.finetune.epochs))])
        selection = choose(ctx, options)
        layers = layer_report(ctx.model, selection.plans)
        remove(ctx.model, selection.plans, example_input(ctx))
        after_removal = _remembered_accuracy(ctx, "l1.accuracy_after_removal", ctx.model)
        first_epoch = finetune(ctx, ctx.model)
        report = {"options": options.model_dump(), **selection.report,
                  "accuracy_after_removal": after_removal, "accuracy_after_first_finetune_epoch": first_epoch}
        return MethodResult(model=ctx.model, report=report, layers=layers)


register(L1Method())
