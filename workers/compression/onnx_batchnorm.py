"""Puts back the BatchNorms that torch's eval-mode ONNX export folded into the preceding convolutions.

`torch.onnx.export` of a model in eval mode (the usual way) fuses every Conv+BatchNorm pair into one Conv
whose weight and bias it computes, so an uploaded CNN arrives with no normalization at all. Trained as is,
a deep ResNet behaves like an unnormalized network: TPP's penalties, tuned for scale-invariant conv
weights under BN, change its function directly, zeroed filters shift the next layer's inputs with
nothing to re-centre them, and finetuning at the rate the BN network trains at diverges. So each folded
Conv gets a BatchNorm back: identity-with-bias until the first training batch, whose statistics it then
adopts while keeping the function exactly (see `RestoredBatchNorm2d`); the export folds it again.
"""

from __future__ import annotations

from typing import cast

import onnx
import torch
from onnx import numpy_helper
from torch import nn

__all__ = ["RESTORED_SUFFIX", "RestoredBatchNorm2d", "calibrating_batchnorms", "unfold_batchnorms"]

RESTORED_SUFFIX = "secateur_restored_bn"  # node-name suffix that marks a BatchNorm we inserted
EPS = 1e-5  # torch's BatchNorm default
# torch's exporter names the tensors it computes while folding after the op they feed ("onnx::Conv_274");
# a conv that was not folded keeps its parameters' names ("features.0.weight").
FOLDED_PREFIX = "onnx::Conv_"


def unfold_batchnorms(model: onnx.ModelProto) -> int:
    """Splits each folded 2-D Conv(x, W, b) into Conv(x, W) -> BatchNormalization in place; returns how many.

    The BatchNorm starts as x + b in eval mode (scale 1, mean 0, variance 1 - eps), so the graph's
    function is unchanged; `calibrating_batchnorms` later gives it real statistics.
    """
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    restored = 0
    for node in graph.node:
        nodes.append(node)
        if not _is_folded_conv(node, initializers):
            continue
        bias = node.input[2]
        channels = initializers[bias].dims[0]
        base = f"{node.name or node.output[0]}/{RESTORED_SUFFIX}"
        ones, zeros = torch.ones(channels).numpy(), torch.zeros(channels).numpy()
        for suffix, value in (("scale", ones), ("mean", zeros), ("var", ones - EPS)):
            graph.initializer.append(numpy_helper.from_array(value, f"{base}/{suffix}"))
        conv_out = f"{node.output[0]}/{RESTORED_SUFFIX}/input"
        norm = onnx.helper.make_node(
            "BatchNormalization", [conv_out, f"{base}/scale", bias, f"{base}/mean", f"{base}/var"],
            [node.output[0]], name=base, epsilon=EPS, momentum=0.9,
        )
        del node.input[2]
        node.output[0] = conv_out
        nodes.append(norm)
        restored += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return restored


def _is_folded_conv(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> bool:
    """Tells whether `node` is a 2-D Conv whose weight and bias torch's exporter computed by folding."""
    if node.op_type != "Conv" or len(node.input) != 3:
        return False
    weight, bias = (initializers.get(name) for name in node.input[1:])
    return (weight is not None and bias is not None and len(weight.dims) == 4
            and all(name.startswith(FOLDED_PREFIX) for name in node.input[1:]))


class RestoredBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that adopts the statistics of its first training batch without changing its function.

    Before that batch it computes x + bias (eval) exactly like the folded Conv did; then it sets the
    running mean/variance to the batch's, the scale to the batch's standard deviation and shifts the
    bias by the batch's mean, so eval and train mode both still compute x + bias on that batch, and
    from then on it trains like the BatchNorm the source model had. `calibrated` travels in checkpoints.
    """

    calibrated: torch.Tensor

    def __init__(self, num_features: int, eps: float = EPS, momentum: float | None = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.register_buffer("calibrated", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrates on the first training batch (B, C, H, W), then normalizes as BatchNorm2d does."""
        if self.training and not bool(self.calibrated):
            self._calibrate(x)
        return super().forward(x)

    @torch.no_grad()
    def _calibrate(self, x: torch.Tensor) -> None:
        """Moves the identity parametrization to the batch's statistics, keeping the eval function."""
        running_mean = cast(torch.Tensor, self.running_mean)  # track_running_stats is on
        running_var = cast(torch.Tensor, self.running_var)
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        # eval before: weight (x - running_mean) / sqrt(running_var + eps) + bias; make it equal after.
        before_scale = self.weight / torch.sqrt(running_var + self.eps)
        before_shift = self.bias - before_scale * running_mean
        std = torch.sqrt(var + self.eps)
        self.weight.copy_(before_scale * std)
        self.bias.copy_(before_shift + before_scale * mean)
        running_mean.copy_(mean)
        running_var.copy_(var)
        self.calibrated.fill_(True)


def calibrating_batchnorms(module: nn.Module) -> int:
    """Replaces the converted BatchNorms that `unfold_batchnorms` inserted with RestoredBatchNorm2d."""
    replaced = 0
    for name, child in list(module.named_children()):  # onnx2torch keeps every op a direct child
        if not (name.endswith(RESTORED_SUFFIX) and isinstance(child, nn.BatchNorm2d)):
            continue
        norm = RestoredBatchNorm2d(child.num_features, eps=child.eps)
        norm.load_state_dict(child.state_dict(), strict=False)  # all but `calibrated`
        setattr(module, name, norm)
        replaced += 1
    return replaced
