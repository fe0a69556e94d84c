"""A model's cost as one small record, and the limits it is held to (no onnx, no torch: the API imports it).

`onnx_cost.estimate_onnx_cost` (an ONNX graph) and `module_cost.estimate_zoo_cost` (a built-in
architecture on the meta device) fill a `ModelCost`; `check_cost` refuses one over its `CostLimits` with
`model_too_costly`, the estimate and the limit in the message.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.compression.errors import ModelTooCostly

__all__ = ["CostLimits", "ModelCost", "check_cost"]


@dataclass(frozen=True)
class ModelCost:
    """A model's cost: stored weights, activations of one sample's forward pass, and its FLOPs."""

    params_bytes: int
    peak_activation_bytes: int  # every tensor one sample's forward pass produces (kept for backward)
    flops_per_sample: int  # multiply-adds count as 2

    def describe(self) -> str:
        """Returns the estimate in words, for messages and logs."""
        return (f"{_gib(self.params_bytes)} of weights, {_gib(self.peak_activation_bytes)} of activations "
                f"and {self.flops_per_sample / 1e9:.3g} GFLOPs per sample")


@dataclass(frozen=True)
class CostLimits:
    """The most a job's model may cost (settings: max_model_params_bytes, ... per sample)."""

    params_bytes: int = 4 << 30
    activation_bytes: int = 2 << 30
    flops_per_sample: int = 10**12


def _gib(n: int) -> str:
    """Formats a byte count in MiB or GiB."""
    return f"{n / (1 << 30):.3g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.3g} MiB"


def check_cost(cost: ModelCost, limits: CostLimits) -> None:
    """Refuses a model whose estimate exceeds any limit, with the estimate and the limit in the message."""
    over = [f"{what} {_gib(value) if unit else f'{value / 1e9:.3g} GFLOPs'} > limit "
            f"{_gib(limit) if unit else f'{limit / 1e9:.3g} GFLOPs'}"
            for what, value, limit, unit in (
                ("weights", cost.params_bytes, limits.params_bytes, True),
                ("activations per sample", cost.peak_activation_bytes, limits.activation_bytes, True),
                ("compute per sample", cost.flops_per_sample, limits.flops_per_sample, False))
            if value > limit]
    if over:
        raise ModelTooCostly(f"the model is too costly to compress here: {'; '.join(over)} "
                             f"(estimate: {cost.describe()})")
