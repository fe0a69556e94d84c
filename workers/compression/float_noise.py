"""How far float32 rounding alone moves a model's logits: the floor under any exactness check on them.

Two float32 computations of the same function (torch vs onnxruntime's fused kernels, a layer before and
after its zeroed channels are removed) sum in different orders. On a well-conditioned model that moves
logits by ~1e-5 relative; on an ill-conditioned one (a random-init RegNet-Y or EfficientNet, whose
squeeze-excite gates amplify rounding) by as much as the model's own float32-vs-float64 error, and no
float32 implementation can agree more closely than that. Checks allow a fixed tolerance and, where a
sample exceeds it, `SLACK` times that sample's own float32 error; a real defect (a dropped mask, a wrong
channel mapping) moves logits by far more.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["ATOL", "DEGENERATE", "RTOL", "SLACK", "degenerate", "excess", "float32_noise"]

ATOL = 1e-3
RTOL = 1e-3
SLACK = 10.0
DEGENERATE = 0.01  # float32 noise at this share of the logits' scale: the model computes nothing reliable


def degenerate(noise: float, scale: float) -> bool:
    """Tells whether float32 rounding alone moves logits of magnitude up to `scale` by a sizeable share of
    it (`noise`): a diverged model, whose outputs no two float32 implementations can agree on."""
    return noise >= DEGENERATE * scale


def float32_noise(model: nn.Module, x: torch.Tensor, logits: np.ndarray) -> np.ndarray:
    """Per sample, how far the model's float32 `logits` are from its float64 ones on `x` (B, 1): how much
    float32 rounding alone moves this model here. Zero where the model cannot run in float64."""
    model.double()  # float32 -> float64 -> float32 is exact, so the weights come back unchanged
    try:
        reference = model(x.double()).cpu().numpy()
    except (RuntimeError, TypeError):  # e.g. a converted graph holding float32 constants outside its buffers
        return np.zeros((logits.shape[0], 1))
    finally:
        model.float()
    noise: np.ndarray = np.max(np.abs(logits - reference), axis=1, keepdims=True)
    return noise


def excess(model: nn.Module, x: torch.Tensor, reference: np.ndarray,
           other: np.ndarray) -> tuple[float, float]:
    """Returns (the largest amount by which `other` logits miss `reference` beyond the tolerance, the
    float32 noise that widened it): <= 0 means they agree. `model` computes `reference` from `x`."""
    over = np.abs(other - reference) - (ATOL + RTOL * np.abs(reference))
    if np.max(over, initial=-np.inf) <= 0:
        return float(np.max(over, initial=-np.inf)), 0.0
    noise = float32_noise(model, x, reference)
    return float(np.max(over - SLACK * noise, initial=-np.inf)), float(np.max(noise))
