"""What a compressed model costs: parameters and nonzeros, MACs, ONNX bytes, onnxruntime latency.

FLOPs are counted as multiply-accumulates (MACs) of Conv and Linear layers for one sample, the pruning
literature's convention (TPP's "FLOPs"), plus the tensor products of attention (q·kᵀ and scores·v,
and nn.MultiheadAttention's functional in-projection), so that pruned heads count; zeros inside a dense
weight still count, because a dense runtime still computes them. Latency compares baseline and pruned
ONNX models in alternation, so that drift of the machine (frequency, other load) hits both sides alike.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from workers.compression.export import INPUT, ort_session
from workers.compression.methods.masks import weight_layers

__all__ = ["LATENCY_BATCHES", "ParamCounts", "count_macs", "count_params", "latency_ms"]

LATENCY_BATCHES = (1, 64)


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a model, overall and over its prunable (Conv/Linear, ndim >= 2) weights."""

    params: int
    nonzero_params: int
    prunable: int
    prunable_nonzero: int


def count_params(model: nn.Module) -> ParamCounts:
    """Counts parameters (buffers such as BN running stats excluded) and their nonzeros."""
    params = list(model.parameters())
    prunable = [w for _, _, w in weight_layers(model)]
    return ParamCounts(
        params=sum(p.numel() for p in params),
        nonzero_params=sum(int(torch.count_nonzero(p)) for p in params),
        prunable=sum(w.numel() for w in prunable),
        prunable_nonzero=sum(int(torch.count_nonzero(w)) for w in prunable),
    )


_PRODUCTS = {torch.matmul, torch.Tensor.matmul, torch.bmm, torch.Tensor.bmm}


class _ProductMacs(TorchFunctionMode):
    """Counts multiply-accumulates of the tensor products no Conv/Linear module accounts for: matmul/bmm
    and scaled-dot-product attention (attention scores and their weighted sum), and F.linear on weights
    that belong to no nn.Linear (nn.MultiheadAttention's packed in-projection)."""

    def __init__(self, linear_weights: set[int]) -> None:
        super().__init__()
        self.linear_weights = linear_weights  # ids of nn.Linear weights: their hooks count them already
        self.total = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        """Runs `func` and adds its MACs when it is a product of interest."""
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _PRODUCTS:
            self.total += out.numel() * args[0].shape[-1]  # (..., N, D) @ (..., D, M): N*M outputs, D each
        elif func is F.scaled_dot_product_attention:
            q, k, v = (*args, *(kwargs[n] for n in ("query", "key", "value") if n in kwargs))[:3]
            self.total += q.shape[:-1].numel() * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        elif func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            if id(weight) not in self.linear_weights:
                self.total += out.numel() * weight.shape[-1]
        return out


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Returns the multiply-accumulates of Conv and Linear layers, and of attention's tensor products, for
    one sample of `input_shape`."""
    total = 0

    def conv_hook(module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        """Adds out_elements * (C_in / groups) * kernel_area for one convolution."""
        nonlocal total
        assert isinstance(module, nn.modules.conv._ConvNd)
        total += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    def linear_hook(module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        """Adds out_elements * in_features for one linear layer."""
        nonlocal total
        assert isinstance(module, nn.Linear)
        total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.modules.conv._ConvNd) else linear_hook)
        for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)
    ]
    products = _ProductMacs({id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)})
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        with torch.no_grad(), products:
            model(torch.zeros(1, *input_shape, device=device))  # batch 1: the hooks count one sample
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total + products.total


def latency_ms(
    baseline: Path, pruned: Path, input_shape: tuple[int, ...], *, threads: int,
    batches: tuple[int, ...] = LATENCY_BATCHES, min_runs: int = 5, max_runs: int = 50, budget_s: float = 5.0,
    cap_s: float = 20.0,
) -> dict[str, Any]:
    """Measures median onnxruntime latency of both models at each batch size, alternating runs.

    Returns {"baseline": {"b1": ms, ...}, "pruned": {...}, "runs": {"b1": n, ...}}: at least `min_runs`
    timed runs per model, more until `max_runs` or about `budget_s` seconds per batch size; a model so large
    that `min_runs` would take over `cap_s` (VGG-16 at 224 px: ~10 CPU s per batch of 64) stops there,
    after one run at least, and `runs` says how many it took.
    """
    sessions = {"baseline": ort_session(baseline, threads), "pruned": ort_session(pruned, threads)}
    result: dict[str, Any] = {"baseline": {}, "pruned": {}, "runs": {}}
    rng = np.random.default_rng(0)
    for batch in batches:
        feed = {INPUT: rng.standard_normal((batch, *input_shape), dtype=np.float32)}
        for session in sessions.values():
            session.run(None, feed)  # warm-up: first runs allocate buffers and pick kernels
        times: dict[str, list[float]] = {"baseline": [], "pruned": []}
        start = time.perf_counter()
        runs = 0
        while _another_run(runs, time.perf_counter() - start, min_runs, max_runs, budget_s, cap_s):
            # Swap who goes first each round, so neither side always runs on a cache warmed by the other.
            order = ("baseline", "pruned") if runs % 2 == 0 else ("pruned", "baseline")
            for side in order:
                t0 = time.perf_counter()
                sessions[side].run(None, feed)
                times[side].append((time.perf_counter() - t0) * 1000.0)
            runs += 1
        for side, samples in times.items():
            result[side][f"b{batch}"] = statistics.median(samples)
        result["runs"][f"b{batch}"] = runs
    return result


def _another_run(runs: int, elapsed_s: float, min_runs: int, max_runs: int, budget_s: float,
                 cap_s: float) -> bool:
    """Whether latency_ms times another round: the first always, then while under budget (or short of
    min_runs and under the cap), never past max_runs."""
    if runs == 0:
        return True
    return runs < max_runs and (elapsed_s < budget_s or (runs < min_runs and elapsed_s < cap_s))
