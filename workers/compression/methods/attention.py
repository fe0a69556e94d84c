"""Attention modules whose heads can be pruned whole: which projections carry the heads, and how the
module's head count follows its (physically smaller) projections after removal.

Two layouts are recognised by their attributes, not by class name, so timm's ViT/DeiT/BEiT-style
`Attention` and Hugging Face's ViT-style attention (and their many copies) are covered:
- fused: `qkv` (Linear, out = 3 * num_heads * head_dim), `num_heads`, `head_dim` (timm);
- split: `q_proj`/`k_proj`/`v_proj` (Linear, out = num_attention_heads * head_dim), `num_attention_heads`,
  `head_dim` (transformers, which reshapes with -1 heads and a fixed head_dim).
A module holding any other tensor (a relative-position bias table over heads, as in Swin, or attention
biases, as in LeViT/EfficientFormer) is not recognised: its heads stay, and the groups through it are
checked like any other by the trial removal in `groups`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

__all__ = ["Heads", "find_heads", "sync_heads"]

_FUSED = ("qkv",)
_SPLIT = ("q_proj", "k_proj", "v_proj")
# Children that carry no per-head tensor: the projections, per-head-dim norms, dropouts.
_HARMLESS = {"qkv", "q_proj", "k_proj", "v_proj", "proj", "o_proj", "q_norm", "k_norm", "norm", "attn_drop",
             "proj_drop"}


@dataclass(frozen=True)
class Heads:
    """One attention module: its head width and the projections whose rows are grouped by head."""

    module: str
    head_dim: int
    projections: tuple[str, ...]  # one fused qkv, or q/k/v

    @property
    def fused(self) -> bool:
        """Tells whether q, k and v are three row blocks of one Linear."""
        return len(self.projections) == 1


def _linear(module: nn.Module, name: str) -> nn.Linear | None:
    """Returns the child Linear `name`, or None."""
    child = getattr(module, name, None)
    return child if isinstance(child, nn.Linear) else None


def _layout(module: nn.Module) -> tuple[str, ...] | None:
    """Returns the projection attribute names when `module` is a recognised attention, else None."""
    head_dim = getattr(module, "head_dim", None)
    if not isinstance(head_dim, int) or head_dim < 1:
        return None
    if any(p is not None for p in module._parameters.values()) or any(
            b is not None for b in module._buffers.values()):
        return None
    if any(name not in _HARMLESS and any(True for _ in child.parameters())
           for name, child in module.named_children()):
        return None
    heads = getattr(module, "num_heads", None)
    qkv = _linear(module, "qkv")
    if isinstance(heads, int) and qkv is not None and qkv.out_features == 3 * heads * head_dim:
        return _FUSED
    heads = getattr(module, "num_attention_heads", None)
    widths = [getattr(_linear(module, name), "out_features", None) for name in _SPLIT]
    if isinstance(heads, int) and widths == [heads * head_dim] * 3:
        return _SPLIT
    return None


def find_heads(model: nn.Module) -> dict[str, Heads]:
    """Returns the recognised attention modules, keyed by the name of each of their q/k/v projections."""
    found: dict[str, Heads] = {}
    for name, module in model.named_modules():
        layout = _layout(module)
        if layout is None:
            continue
        prefix = f"{name}." if name else ""
        heads = Heads(name, int(module.head_dim), tuple(prefix + p for p in layout))
        found |= {projection: heads for projection in heads.projections}
    return found


def sync_heads(model: nn.Module, heads: Iterable[Heads]) -> None:
    """Sets each attention's head count (and timm's `attn_dim`) from its projections' widths, after whole
    heads were removed from them (`heads` were found before the removal)."""
    for found in set(heads):
        module = model.get_submodule(found.module)
        width = model.get_submodule(found.projections[0])
        assert isinstance(width, nn.Linear)
        count = width.out_features // ((3 if found.fused else 1) * found.head_dim)
        setattr(module, "num_heads" if found.fused else "num_attention_heads", count)
        if found.fused and isinstance(getattr(module, "attn_dim", None), int):
            setattr(module, "attn_dim", count * found.head_dim)  # noqa: B010 (nn.Module's typed __setattr__)
