"""Adaptive average pools the ONNX exporter cannot express, rewritten for the export as two matmuls.

`AdaptiveAvgPool2d((6, 6))` over a map whose side is not a multiple of 6 (AlexNet or VGG fed 64 px: a
1×1 or 2×2 map) has no ONNX form in the legacy exporter. The exported graph has a fixed image size (only
the batch axis is dynamic), so each such pool is an exact linear map on H and W: out = P_h · x · P_wᵀ,
with P's rows averaging the same windows PyTorch's adaptive pool uses. The modules are swapped only while
exporting; training and pruning never see them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["exportable_pools"]


class _MatrixPool(nn.Module):
    """Adaptive average pooling for one fixed input size, as MatMuls with constant averaging matrices."""

    def __init__(self, size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
        super().__init__()
        self.rows = nn.Buffer(_averaging(size_in[0], size_out[0]))  # (O_h, H)
        self.cols = nn.Buffer(_averaging(size_in[1], size_out[1]).T.contiguous())  # (W, O_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, C, H, W) to (B, C, O_h, O_w)."""
        return torch.matmul(torch.matmul(self.rows.to(x.dtype), x), self.cols.to(x.dtype))


def _averaging(size_in: int, size_out: int) -> torch.Tensor:
    """Returns the (size_out, size_in) matrix whose row i averages PyTorch's adaptive window i."""
    matrix = torch.zeros(size_out, size_in)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)  # floor, ceil
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


@contextmanager
def exportable_pools(model: nn.Module, example: torch.Tensor) -> Iterator[None]:
    """Swaps every 2-D adaptive average pool that the exporter cannot express for its matrix form, for
    the duration of the block (the input sizes are read from one forward pass on `example`)."""
    sizes: dict[str, tuple[int, int]] = {}
    pools = {name: m for name, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)}

    def recorder(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        """Returns a pre-hook that keeps the pool's input height and width."""

        def record(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            """Keeps the first input's (H, W)."""
            sizes.setdefault(name, (int(args[0].shape[-2]), int(args[0].shape[-1])))

        return record

    hooks = [m.register_forward_pre_hook(recorder(name)) for name, m in pools.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for name, adaptive in pools.items():
        size_in = sizes.get(name)
        out = None if size_in is None else _pair(adaptive.output_size, size_in)
        if size_in is None or out is None or (size_in[0] % out[0] == 0 and size_in[1] % out[1] == 0):
            continue  # not run, or a plain pool the exporter handles
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, _MatrixPool(size_in, out).to(example.device))
        swapped.append((parent, attr, adaptive))
    try:
        yield
    finally:
        for parent, attr, original in swapped:
            setattr(parent, attr, original)


def _pair(output_size: object, size_in: tuple[int, int]) -> tuple[int, int]:
    """Resolves an adaptive pool's output size (an int, a pair, None meaning the input's) to a pair."""
    pair = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    height, width = (int(size_in[i] if pair[i] is None else pair[i]) for i in range(2))
    return height, width
