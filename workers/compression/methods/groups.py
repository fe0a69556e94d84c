"""Channel groups of a model and their physical removal, from torch-pruning's dependency graph.

A group is every tensor that loses a channel together: conv/linear out-channels, the norms after them, the
next layers' in-channels — across concatenations, depthwise and grouped convolutions, squeeze-excite gates,
residual adds and attention heads. The same code serves the zoo (option-A ResNets, VGGs), torchvision/timm/
Hugging Face models and ONNX-imported graphs whose module names mean nothing.

The analysis is bounded: tracing, the group search and each removal run under a CPU-time budget, and
anything torch-pruning raises becomes an `UnsupportedOp` naming the module or op it was looking at.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.ops import OPTYPE

from workers.compression.errors import UnsupportedOp
from workers.compression.methods.attention import Heads, find_heads, sync_heads, table_parameters
from workers.compression.methods.tracing import BudgetSpent, analysis, check_deadline, culprit, trace

__all__ = [
    "GRAPH_BUDGET_S",
    "BudgetSpent",
    "Group",
    "GroupPlan",
    "Member",
    "Structure",
    "find_groups",
    "iter_members",
    "only_exact",
    "remove",
]

GRAPH_BUDGET_S = 30.0  # per trace + group search, and per removal: ShuffleNet V2 once ran for 15+ minutes
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # transposed convs are left alone
# Per-channel scale/shift that goes with its channel; all but BatchNorm also mix channels in their statistics.
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_MIXING = (OPTYPE.LN, OPTYPE.GN, OPTYPE.IN, OPTYPE.PARAMETER, OPTYPE.EMBED)
_COUPLING_OFF = "left alone (options.coupled: true prunes them with shared indices)"
_COUPLING_ON = "pruned with shared indices (options.coupled: true)"
_COUPLING_AUTO = "pruned with shared indices: every prunable group is coupled through a residual add"


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
    """One prunable group; channel c means channel c of `root`, the first member layer in model order.

    Channels go in whole positions: the channels split into `repeat` equal blocks (the groups of a grouped
    conv or GroupNorm, the q/k/v blocks of a fused projection), each block into positions of `unit`
    consecutive channels (one attention head; 1 otherwise), and a pruned position goes in every block.
    """

    root: str
    channels: int
    layers: tuple[Member, ...]  # convs/linears whose filters (out-channels) go
    norms: tuple[Member, ...]  # BatchNorm/LayerNorm/GroupNorm whose scale/shift (and statistics) go
    coupled: bool  # joined through a residual add: the add's inputs lose the same channels
    repeat: int = 1
    unit: int = 1
    exact: bool = True  # zeroing the layers and norms zeroes the channel (no LayerNorm mixes it in, ...)
    heads: tuple[Heads, ...] = ()  # attention modules whose head count follows the removal

    @property
    def positions(self) -> int:
        """Returns the number of prunable positions per block (heads, or channels per conv group)."""
        return self.channels // (self.repeat * self.unit)

    def expand(self, positions: Sequence[int]) -> tuple[int, ...]:
        """Returns the group channels (ascending) of the given positions, in every block."""
        block = self.positions * self.unit
        return tuple(sorted(b * block + p * self.unit + u
                            for b in range(self.repeat) for p in positions for u in range(self.unit)))


@dataclass(frozen=True)
class Structure:
    """The groups a method may prune, the groups left alone with the reason, and what happened to groups
    coupled through residual adds (for the report)."""

    groups: tuple[Group, ...]
    skipped: tuple[tuple[str, str], ...]
    coupling: str = _COUPLING_OFF


@dataclass(frozen=True)
class GroupPlan:
    """The channels (group indexing, ascending) removed from one group."""

    group: Group
    pruned: tuple[int, ...]


# --- which groups -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What classifying a torch-pruning group needs to know about the traced model."""

    graph: Any
    names: dict[nn.Module, str]
    order: dict[str, int]
    edges: set[nn.Module]
    cut: dict[Any, str]  # graph nodes where groups end -> why
    heads: dict[str, Heads]
    rank: int
    constant: set[Any]  # nodes computed from parameters alone


def _parameter_only(dg: Any) -> set[Any]:
    """Returns the graph nodes computed from parameters alone (a relative-position bias gathered from its
    table): adding one to a feature map adds a bias, it does not join two feature maps."""
    nodes = list(dg.module2node.values())
    found = {n for n in nodes if n.type == OPTYPE.PARAMETER}
    grew = True
    while grew:
        check_deadline()
        fresh = [n for n in nodes if n not in found and n.inputs and all(i in found for i in n.inputs)]
        found.update(fresh)
        grew = bool(fresh)
    return found


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
        check_deadline()
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


def _is_residual_add(node: Any, constant: set[Any]) -> bool:
    """Tells whether `node` adds (or subtracts) two feature maps; CopySlices is an in-place add into a
    view (GhostNet's `x += shortcut` on a sliced concatenation). A product of two (a squeeze-excite gate,
    attention scores) also ties their channels, but it is part of the block, not a residual stream; so is
    a sum with a `constant` node (a parameter-only bias on attention scores)."""
    grad_fn = node.grad_fn
    return (node.type == OPTYPE.ELEMENTWISE and grad_fn is not None
            and grad_fn.name().rsplit("::", 1)[-1].startswith(("AddBackward", "SubBackward", "CopySlices"))
            and sum(i not in constant for i in node.inputs) > 1)


def _channel_groups(module: Any) -> int:
    """Returns how many equal channel groups `module` keeps apart: a grouped (not depthwise) conv's
    groups, a GroupNorm's groups; 1 otherwise. A pruned position must go in every one of them."""
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups != module.out_channels:
        return int(module.groups)
    if isinstance(module, nn.GroupNorm):
        return int(module.num_groups)
    return 1


_Entry = tuple[str, list[int], list[int]]  # (module name, own indices, torch-pruning root indices)
_Constraint = tuple[list[int], list[int], int, int]  # (own indices, tp-root indices, groups, channel count)


def _members(entry: _Entry, to_tp: dict[int, int], channels: int) -> list[Member]:
    """Re-indexes a member by the root's channels: k Members of one module when it holds each group
    channel k times (a depthwise conv after a Ghost module's concatenation of a map and its cheap copy)."""
    name, own, tp_root = entry
    by_tp: dict[int, list[int]] = {}
    for root, index in zip(tp_root, own, strict=True):
        by_tp.setdefault(root, []).append(index)
    copies = [sorted(by_tp[to_tp[c]]) for c in range(channels)]
    return [Member(name, tuple(c[k] for c in copies)) for k in range(len(copies[0]))]


def _same_channels(entry: _Entry, root_tp: list[int]) -> bool:
    """Tells whether a member sees exactly the root's channels, each the same number of times."""
    counts = Counter(entry[2])
    return sorted(counts) == sorted(root_tp) and len(set(counts.values())) == 1


def _block_layout(ctx: _Context, layers: list[Member], constraints: list[_Constraint],
                  to_ours: dict[int, int], channels: int) -> tuple[int, int, tuple[Heads, ...]] | str:
    """Returns (repeat, unit, heads) for a group, or why its grouped convs / norms / heads do not line up
    with its channels (each must see the group's channels one to one, in the root's order)."""
    repeat = 1
    for own, tp_root, groups, count in constraints:
        if count != channels or [to_ours.get(r) for r in tp_root] != own:
            return "unmodelled channel mapping (grouped conv or GroupNorm behind a concat, split or reshape)"
        repeat = math.lcm(repeat, groups)
    heads = sorted({ctx.heads[m.name] for m in layers if m.name in ctx.heads}, key=lambda h: h.module)
    unit = 1
    if heads:
        by_name = {m.name: m for m in layers}
        identity = tuple(range(channels))
        if len({h.head_dim for h in heads}) > 1 or any(
                by_name.get(p) is None or by_name[p].local != identity for h in heads for p in h.projections):
            return "unmodelled channel mapping (attention projections outside the group)"
        unit = heads[0].head_dim
        repeat = math.lcm(repeat, 3 if heads[0].fused else 1)
    if channels % (repeat * unit):
        return "unmodelled channel mapping (channels not divisible into groups or heads)"
    return repeat, unit, tuple(heads)


def _classify(ctx: _Context, tp_group: Any) -> Group | set[str]:
    """Turns a torch-pruning group into a `Group`, or returns why it must be left alone."""
    dg = ctx.graph
    layers: list[_Entry] = []
    norms: list[_Entry] = []
    constraints: list[_Constraint] = []
    problems: set[str] = set()
    coupled, exact = False, True
    for item in tp_group:
        node, module, idxs = item.dep.target, item.dep.target.module, list(item.idxs)
        out = dg.is_out_channel_pruning_fn(item.dep.handler)
        coupled = coupled or _is_residual_add(node, ctx.constant)
        exact = exact and node.type not in _MIXING
        if node in ctx.cut:
            problems.add(ctx.cut[node])
        if _pads_channels(node, ctx.rank):
            problems.add("unmodelled channel mapping (channel padding, e.g. an option-A shortcut)")
        if _channel_groups(module) > 1:
            count = dg.get_out_channels(module) if out else dg.get_in_channels(module)
            constraints.append((idxs, list(item.root_idxs), _channel_groups(module), count))
        if not out:
            in_channels = dg.get_in_channels(module) if isinstance(module, nn.Module) else None
            if in_channels is not None and max(idxs) >= in_channels:
                problems.add("unmodelled channel mapping (index out of range)")
            continue
        if module in ctx.edges:
            problems.add("holds the first conv or the classifier")
        if isinstance(module, (*_LAYERS, *_NORMS)):
            # The group lists every channel once: each layer must be covered exactly, one to one. A BatchNorm
            # treats channels apart, so it may hold channels of several groups (DenseNet's concatenations).
            whole = sorted(idxs) == list(range(dg.get_out_channels(module)))
            part = isinstance(module, nn.modules.batchnorm._BatchNorm) and len(set(idxs)) == len(idxs)
            if not (whole or part):
                problems.add("unmodelled channel mapping (partial coverage)")
            target = layers if isinstance(module, _LAYERS) else norms
            target.append((ctx.names[module], idxs, list(item.root_idxs)))
    if coupled:
        problems.add("coupled through a residual add")
    if problems - {"coupled through a residual add"} or not layers:
        return problems or {"no conv/linear in the group"}
    layers.sort(key=lambda m: ctx.order[m[0]])
    _, root_own, root_tp = layers[0]
    if len(set(root_tp)) != len(root_own) or not all(_same_channels(e, root_tp) for e in layers + norms):
        return {"unmodelled channel mapping (members see different channels)"}
    to_tp = dict(zip(root_own, root_tp, strict=True))  # root's own channel -> tp-root channel
    channels = len(root_own)
    members = [m for e in layers for m in _members(e, to_tp, channels)]
    layout = _block_layout(ctx, members, constraints, {t: o for o, t in to_tp.items()}, channels)
    if isinstance(layout, str):
        return {layout}
    repeat, unit, heads = layout
    norm_members = tuple(m for e in norms for m in _members(e, to_tp, channels))
    return Group(layers[0][0], channels, tuple(members), norm_members, coupled, repeat=repeat, unit=unit,
                 exact=exact, heads=heads)


def _tp_groups(ctx: _Context, skipped: list[tuple[str, str]]) -> Iterator[Any]:
    """Yields torch-pruning's group of each conv/linear's out-channels, once per group, like its
    `get_all_groups`, but rooted at the group's first layer in model order (so a Ghost module's primary
    conv, not the wider depthwise conv after its concatenation, defines the channels), and a group it
    cannot map (an op whose channels it mis-infers) is skipped with the op named, instead of failing the
    whole model."""
    dg, visited = ctx.graph, set[nn.Module]()

    def rooted(module: nn.Module) -> Any:
        """Returns the group of all of `module`'s out-channels."""
        pruner = dg.get_pruner_of_module(module)
        return dg.get_pruning_group(module, pruner.prune_out_channels,
                                    list(range(pruner.get_out_channels(module))))

    for module in list(dg.module2node):
        check_deadline()
        if not isinstance(module, _LAYERS) or module in visited:
            continue
        try:
            group = rooted(module)
            outs = [i.dep.target.module for i in group if dg.is_out_channel_pruning_fn(i.dep.handler)]
            first = min((m for m in outs if isinstance(m, _LAYERS)), key=lambda m: ctx.order[ctx.names[m]])
            if first is not module:
                group = rooted(first)
        except Exception as exc:  # torch-pruning's index mapping: IndexError, KeyError, ... on odd ops
            at = culprit(exc, ctx.names)
            skipped.append((ctx.names.get(module, "?"), f"torch-pruning cannot map its channels "
                                                        f"({type(exc).__name__} at {at})"))
            continue
        visited.update(i.dep.target.module for i in group if dg.is_out_channel_pruning_fn(i.dep.handler))
        yield group


def _output_shape(model: nn.Module, example: torch.Tensor) -> tuple[int, ...]:
    """Runs a batch of two in eval mode (BN statistics untouched) and returns the output's shape."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return tuple(model(example.expand(2, *example.shape[1:])).shape)
    finally:
        model.train(was_training)


def _breaks(model: nn.Module, example: torch.Tensor, groups: Sequence[Group]) -> str | None:
    """Removes half the positions of each group from a copy and runs it; returns what broke, or None.
    (One position is not enough: Res2Net splits its width into fixed-size chunks, and one channel less
    only shortens the last chunk, which it does not convolve.)"""
    trial = copy.deepcopy(model)
    try:
        remove(trial, [GroupPlan(g, g.expand(range(g.positions // 2))) for g in groups], example)
    except BudgetSpent:
        raise
    except UnsupportedOp as exc:  # remove() checks that the output keeps its shape
        return exc.message
    return None


def _working(model: nn.Module, example: torch.Tensor, groups: list[Group],
             skipped: list[tuple[str, str]]) -> list[Group]:
    """Returns the groups whose removal keeps the model working; the others go to `skipped` (a fixed shape
    or a per-head tensor the graph does not show). Halving finds the culprits in O(k log n) trials, within
    the analysis budget: groups not cleared by then are left alone too."""
    cleared = [g for g in groups if g.positions <= 1]  # a group of one position is never pruned
    broken: list[tuple[Group, str]] = []
    pending = [[g for g in groups if g.positions > 1]]
    subset: list[Group] = []  # the subset under trial when the budget runs out
    try:
        with analysis("the trial removal", {}, GRAPH_BUDGET_S):
            while pending:
                check_deadline()
                subset = pending.pop()
                reason = _breaks(model, example, subset) if subset else None
                if reason is None:
                    cleared += subset
                elif len(subset) == 1:
                    broken.append((subset[0], reason))
                else:
                    pending += [subset[len(subset) // 2:], subset[: len(subset) // 2]]
                subset = []
    except BudgetSpent:
        why = f"not verified within the {GRAPH_BUDGET_S:g} CPU-second analysis budget"
        skipped += [(g.root, why) for g in subset + [g for rest in pending for g in rest]]
    skipped += [(g.root, f"removing its channels breaks the model ({why[:160]})") for g, why in broken]
    return [g for g in groups if g in cleared]


def find_groups(model: nn.Module, example: torch.Tensor, *, coupled: bool) -> Structure:
    """Finds the prunable groups: all conv/linear groups but the first conv's and the classifier's. Groups
    coupled through residual adds are pruned when `coupled`, or when nothing else is prunable (ConvNeXt,
    RepVGG); otherwise they are left alone, as in the paper."""
    names = {module: name for name, module in model.named_modules()}
    found: list[Group] = []
    skipped: list[tuple[str, str]] = []
    with analysis("the dependency-graph analysis", names, GRAPH_BUDGET_S):
        heads = find_heads(model)
        dg, cut = trace(model, example, table_parameters(model, heads.values()))
        order = {name: i for i, name in enumerate(names.values())}
        ctx = _Context(dg, names, order, _edge_layers(dg), cut, heads, example.dim(), _parameter_only(dg))
        for tp_group in _tp_groups(ctx, skipped):
            result = _classify(ctx, tp_group)
            if isinstance(result, set):
                skipped.append((names.get(tp_group[0].dep.target.module, "?"), "; ".join(sorted(result))))
            else:
                found.append(result)
    uncoupled = [g for g in found if not g.coupled]
    if coupled or not uncoupled:
        policy = _COUPLING_ON if coupled else _COUPLING_AUTO
    else:
        policy = _COUPLING_OFF
        skipped += [(g.root, "coupled through a residual add (options.coupled: true prunes it)")
                    for g in found if g.coupled]
        found = uncoupled
    found.sort(key=lambda g: ctx.order[g.root])
    groups = _working(model, example, found, skipped)
    return Structure(tuple(groups), tuple(sorted(skipped)), policy)


def only_exact(structure: Structure) -> Structure:
    """Keeps the groups whose zeroed channels can be removed without changing the output (TPP's zero-out):
    a LayerNorm/GroupNorm over the channels, or an added parameter (position embedding), would still see
    them; those groups go to `skipped`."""
    inexact = [(g.root, "normalized or offset together with kept channels (LayerNorm, GroupNorm, an added "
                        "parameter): a zeroed channel cannot be removed exactly") for g in structure.groups
               if not g.exact]
    return replace(structure, groups=tuple(g for g in structure.groups if g.exact),
                   skipped=tuple(sorted((*structure.skipped, *inexact))))


# --- removal ---------------------------------------------------------------------------------------------


def remove(model: nn.Module, plans: Sequence[GroupPlan], example: torch.Tensor) -> None:
    """Removes the planned channels physically: smaller convs/norms/linears, consumers lose their inputs,
    attention modules lose whole heads (their head count follows)."""
    expected = _output_shape(model, example)
    names = {module: name for name, module in model.named_modules()}
    with analysis("channel removal", names, GRAPH_BUDGET_S):
        dg, _ = trace(model, example, table_parameters(model, find_heads(model).values()))
        modules = dict(model.named_modules())
        # Every group is resolved on the unpruned graph, then each (tensor, pruning function) is cut once
        # with the union of its indices: all indices stay in the original coordinates (a BatchNorm after a
        # DenseNet concatenation holds channels of many groups), and the graph's mapping stays valid.
        merged: dict[tuple[Any, Any], tuple[Any, set[int]]] = {}
        for plan in plans:
            root = modules[plan.group.root]
            prune_out = dg.get_pruner_of_module(root).prune_out_channels
            for dep, idxs in dg.get_pruning_group(root, prune_out, list(plan.pruned)):
                merged.setdefault((dep.target, dep.handler), (dep, set()))[1].update(idxs)
        everything = tp.dependency.Group()
        everything._DG = dg
        for dep, idxs in merged.values():
            everything.add_dep(dep, sorted(idxs))
        everything.prune(record_history=False)
    sync_heads(model, [(h, _removed_heads(plan)) for plan in plans for h in plan.group.heads])
    try:
        shape = _output_shape(model, example)
    except Exception as exc:  # the user's graph fails on fewer channels: a shape error, a split's IndexError
        shape, reason = (), str(exc).splitlines()[0]
    else:
        reason = f"it now outputs {shape} instead of {expected}"
    if shape != expected:
        raise UnsupportedOp(
            f"removing channels broke the model ({reason}): the graph probably fixes a channel count in a "
            "constant, such as a Reshape to a fixed shape. Flatten with a dynamic shape "
            "(torch.flatten(x, 1)) before exporting, or use an unstructured method (magnitude, weightmom)")


def _removed_heads(plan: GroupPlan) -> list[int]:
    """Returns the head indices a plan removes (a head is a position of its group)."""
    block = plan.group.positions * plan.group.unit
    return sorted({(c % block) // plan.group.unit for c in plan.pruned})


def iter_members(plans: Sequence[GroupPlan], model: nn.Module) -> Iterator[tuple[nn.Module, list[int], bool]]:
    """Yields (module, its own pruned indices, is_norm) for every layer and norm the plans touch, once per
    module and plan (a module holding a channel twice yields both rows together)."""
    modules = dict(model.named_modules())
    for plan in plans:
        for members, is_norm in ((plan.group.layers, False), (plan.group.norms, True)):
            rows: dict[str, set[int]] = {}
            for member in members:
                rows.setdefault(member.name, set()).update(member.pruned(plan.pruned))
            for name, own in rows.items():
                yield modules[name], sorted(own), is_norm
