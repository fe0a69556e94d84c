"""Mask bookkeeping for unstructured pruning: which tensors are prunable, their masks and scores, and
removing weights from them (weight, score and optimizer state zeroed together).

Masks live beside the module, never inside it (no torch.nn.utils.prune reparametrization): pruned
weights are plain zeros in an ordinary `weight`, which is what ONNX export and zstd then see.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from workers.compression.errors import InvalidConfig

__all__ = [
    "PrunableLayer", "global_removal_counts", "layer_kind", "select_prunable", "smallest", "weight_layers",
]

LayerKind = Literal["conv", "linear"]


def layer_kind(module: nn.Module) -> LayerKind | None:
    """Returns "conv" or "linear" for a module type whose weight WeightMom prunes, None for anything else."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def weight_layers(model: nn.Module) -> list[tuple[str, LayerKind, nn.Parameter]]:
    """Lists (module name, kind, weight) of Conv/Linear modules with a weight of ndim >= 2, in definition
    order, a shared weight only once."""
    seen: set[int] = set()
    found: list[tuple[str, LayerKind, nn.Parameter]] = []
    for name, module in model.named_modules():
        kind, weight = layer_kind(module), getattr(module, "weight", None)
        if kind is None or not isinstance(weight, nn.Parameter) or weight.ndim < 2:
            continue
        if id(weight) not in seen:
            seen.add(id(weight))
            found.append((name, kind, weight))
    return found


@dataclass
class PrunableLayer:
    """One prunable weight with its mask and score, all of the weight's shape and device."""

    name: str
    kind: LayerKind
    weight: nn.Parameter
    pruned: torch.Tensor = field(init=False)  # bool, True where the weight is removed for good
    score: torch.Tensor = field(init=False)  # m, the EMA of |w|; starts at |w|

    def __post_init__(self) -> None:
        """Starts dense, with scores at the current magnitudes."""
        self.pruned = torch.zeros_like(self.weight, dtype=torch.bool)
        self.score = self.weight.detach().abs()

    @property
    def alive(self) -> int:
        """Returns how many weights are not pruned."""
        return self.weight.numel() - int(self.pruned.sum())

    def remove_smallest(self, count: int, optimizer: torch.optim.Optimizer | None) -> None:
        """Prunes the `count` alive weights of smallest score (ties to the lower flat index): zeroes the
        weight, its score and every optimizer-state tensor shaped like it (momentum, Adam moments)."""
        if count <= 0:
            return
        candidates = self.score.masked_fill(self.pruned, float("inf")).flatten()
        newly = smallest(candidates, count).view(self.pruned.shape)  # a mask: any memory layout works
        with torch.no_grad():
            self.pruned |= newly
            self.weight.masked_fill_(newly, 0.0)
            self.score.masked_fill_(newly, 0.0)
            if optimizer is not None:
                for value in optimizer.state.get(self.weight, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == self.weight.shape:
                        value.masked_fill_(newly, 0.0)


def select_prunable(model: nn.Module, exclude: Sequence[str]) -> list[PrunableLayer]:
    """Returns the Conv/Linear weights to prune, minus modules whose name matches an `exclude` glob;
    a pattern that matches nothing is refused (a typo must not silently prune the layer it meant)."""
    layers = weight_layers(model)
    names = [name for name, _, _ in layers]
    unmatched = [pattern for pattern in exclude if not any(fnmatch.fnmatchcase(n, pattern) for n in names)]
    if unmatched:
        shown = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
        raise InvalidConfig(
            f"options.exclude_layers {unmatched} match no Conv/Linear layer; the layers are: {shown}"
        )
    kept = [
        PrunableLayer(name, kind, weight)
        for name, kind, weight in layers
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)
    ]
    if not kept:
        raise InvalidConfig("options.exclude_layers excludes every Conv/Linear layer: nothing left to prune")
    return kept


def global_removal_counts(layers: Sequence[PrunableLayer], count: int) -> list[int]:
    """Returns, per layer, how many of the `count` alive weights of globally smallest score it holds
    (the count-based global threshold on m; ties to the earlier layer, then the lower flat index)."""
    alive_scores = torch.cat([layer.score[~layer.pruned] for layer in layers])  # (sum a_l,)
    chosen = smallest(alive_scores, count)
    return [int(part.sum()) for part in torch.split(chosen, [layer.alive for layer in layers])]


def smallest(values: torch.Tensor, count: int) -> torch.Tensor:
    """Returns a bool mask of the `count` smallest entries of 1-D `values`, ties to the lower index (what a
    stable argsort's first `count` pick), in linear time: sorting VGG-16's 138 M weights took 20 CPU s at
    every pruning event."""
    if count >= values.numel():
        return torch.ones_like(values, dtype=torch.bool)
    if count <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    threshold = _kth_smallest(values, count)
    chosen = values < threshold
    ties = torch.nonzero(values == threshold).flatten()[: count - int(chosen.sum())]
    chosen[ties] = True
    return chosen


def _kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Returns the k-th smallest entry (1-based) as a 0-d tensor on values' device: numpy's introselect on
    the CPU, 3x faster than torch.kthvalue there (1.0 vs 3.2 s on 100 M floats)."""
    if values.device.type == "cpu":
        return torch.as_tensor(np.partition(values.detach().numpy(), k - 1)[k - 1])
    return torch.kthvalue(values, k).values
