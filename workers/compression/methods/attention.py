"""Attention modules whose heads can be pruned whole: which projections carry the heads, which tensors are
indexed by head, and how the module follows the removal of heads.

Two layouts are recognised by their attributes, not by class name, so timm's ViT/DeiT/BEiT/Swin-style
attention and Hugging Face's ViT/Swin-style attention (and their many copies) are covered:
- fused: `qkv` (Linear, out = 3 * num_heads * head_dim), `num_heads`, `head_dim` if any (timm);
- split: `q_proj`/`k_proj`/`v_proj` (Linear, out = num_attention_heads * head_dim), `num_attention_heads`,
  `head_dim` if any (transformers, which reshapes with -1 heads and a fixed head_dim).
A module whose forward derives the head width differently breaks in the trial removal and keeps its heads.
Parameters beyond the projections must be indexed by head on their last dim (Swin's relative-position
bias tables): they lose the removed heads' entries. A module holding any other parameter or float buffer
(LeViT/EfficientFormer attention biases with other key/value widths, Swin V2's bias MLP) is not
recognised: its heads stay, and the groups through it are checked by the trial removal in `groups`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Heads", "find_heads", "sync_heads"]

_FUSED = ("qkv",)
_SPLIT = ("q_proj", "k_proj", "v_proj")
# Children that carry no per-head tensor: the projections, per-head-dim norms, dropouts.
_HARMLESS = {"qkv", "q_proj", "k_proj", "v_proj", "proj", "o_proj", "q_norm", "k_norm", "norm", "attn_drop",
             "proj_drop"}


@dataclass(frozen=True)
class Heads:
    """One attention module: its head width, the projections whose rows are grouped by head, and the
    parameters indexed by head on their last dim (full names)."""

    module: str
    head_dim: int
    projections: tuple[str, ...]  # one fused qkv, or q/k/v
    tables: tuple[str, ...] = ()

    @property
    def fused(self) -> bool:
        """Tells whether q, k and v are three row blocks of one Linear."""
        return len(self.projections) == 1

    @property
    def count_attribute(self) -> str:
        """Returns the name of the module's head-count attribute."""
        return "num_heads" if self.fused else "num_attention_heads"


def _linear(module: nn.Module, name: str) -> nn.Linear | None:
    """Returns the child Linear `name`, or None."""
    child = getattr(module, name, None)
    return child if isinstance(child, nn.Linear) else None


def _projections(module: nn.Module) -> tuple[tuple[str, ...], int, int] | None:
    """Returns (projection attribute names, head count, head width) when the projections fit one of the
    layouts; without a `head_dim` attribute (timm's Swin, which reshapes with -1) the width is derived."""
    declared = getattr(module, "head_dim", None)
    heads = getattr(module, "num_heads", None)
    qkv = _linear(module, "qkv")
    if isinstance(heads, int) and heads > 0 and qkv is not None and qkv.out_features % (3 * heads) == 0:
        head_dim = qkv.out_features // (3 * heads)
        if declared in (None, head_dim):
            return _FUSED, heads, head_dim
    heads = getattr(module, "num_attention_heads", None)
    widths = [getattr(_linear(module, name), "out_features", None) for name in _SPLIT]
    if isinstance(heads, int) and heads > 0 and isinstance(widths[0], int) and widths == [widths[0]] * 3:
        head_dim = widths[0] // heads
        if widths[0] % heads == 0 and declared in (None, head_dim):
            return _SPLIT, heads, head_dim
    return None


def _tables(module: nn.Module, heads: int) -> tuple[str, ...] | None:
    """Returns the names of the parameters outside the projections, when each is indexed by head on its
    last dim and no float buffer lies outside them either; None otherwise."""
    def outside(name: str) -> bool:
        """Tells whether a tensor name lies outside the harmless children."""
        return "." not in name or name.split(".", 1)[0] not in _HARMLESS

    tables = [(n, p) for n, p in module.named_parameters() if outside(n)]
    floats = [b for n, b in module.named_buffers() if outside(n) and torch.is_floating_point(b)]
    if floats or any(p.dim() == 0 or p.shape[-1] != heads for _, p in tables):
        return None
    return tuple(n for n, _ in tables)


def _layout(module: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...], int] | None:
    """Returns (projection attribute names, per-head table names, head width) for a recognised attention,
    else None."""
    found = _projections(module)
    if found is None:
        return None
    projections, heads, head_dim = found
    tables = _tables(module, heads)
    return None if tables is None else (projections, tables, head_dim)


def find_heads(model: nn.Module) -> dict[str, Heads]:
    """Returns the recognised attention modules, keyed by the name of each of their q/k/v projections."""
    found: dict[str, Heads] = {}
    for name, module in model.named_modules():
        layout = _layout(module)
        if layout is None:
            continue
        prefix = f"{name}." if name else ""
        projections, tables, head_dim = layout
        heads = Heads(name, head_dim, tuple(prefix + p for p in projections),
                      tuple(prefix + t for t in tables))
        found |= {projection: heads for projection in heads.projections}
    return found


def table_parameters(model: nn.Module, heads: Iterable[Heads]) -> list[nn.Parameter]:
    """Returns the per-head tables of `heads`: the graph must not prune them as channels."""
    return [model.get_parameter(t) for h in set(heads) for t in h.tables]


def sync_heads(model: nn.Module, removed: Iterable[tuple[Heads, Sequence[int]]]) -> None:
    """After the projections lost whole heads (`removed`: the head indices, found before the removal):
    sets each module's head count (and timm's `attn_dim`) and drops those heads from its tables."""
    for heads, gone in removed:
        module = model.get_submodule(heads.module)
        before = int(getattr(module, heads.count_attribute))
        kept = [h for h in range(before) if h not in set(gone)]
        setattr(module, heads.count_attribute, len(kept))
        if heads.fused and isinstance(getattr(module, "attn_dim", None), int):
            setattr(module, "attn_dim", len(kept) * heads.head_dim)  # noqa: B010 (nn.Module's typed __setattr__)
        for name in heads.tables:
            owner_name, _, attribute = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            table = getattr(owner, attribute)
            setattr(owner, attribute, nn.Parameter(table.detach()[..., kept].clone(),
                                                   requires_grad=table.requires_grad))
