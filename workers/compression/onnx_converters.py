"""Fixes to onnx2torch 1.5.15 for the graphs users upload: its converters that produce modules which fail
on symbolic shapes or on re-export with the installed torch are replaced by ours.

Shape arithmetic must stay dynamic through our re-export: onnx2torch exports Shape, Reshape and Expand as
autograd Functions, whose outputs torch's exporter types with the traced (batch 1) sizes, so a later
Shape of them is folded into a constant and a ViT's class token is expanded to batch 1 for every batch.
Ours trace as torch ops (`torch.onnx.operators`), which the exporter keeps symbolic.
`install` runs once, after onnx2torch is imported and before any conversion.
"""

from __future__ import annotations

import sys
from typing import Any, cast

import torch
from torch import nn
from torch.onnx.operators import reshape_from_tensor_shape, shape_as_tensor

__all__ = ["fuse_linear_bias", "install"]


def install() -> None:
    """Patches onnx2torch's opset lookup for torch's export and registers our converters (idempotent)."""
    for name, module in list(sys.modules.items()):
        # onnx2torch reads the export opset from `symbolic_helper.GLOBALS`, which torch 2.9 moved; every
        # converter module imported the helper by name, so each one gets ours.
        if name.startswith("onnx2torch.") and hasattr(module, "get_onnx_version"):
            setattr(module, "get_onnx_version", _export_opset)  # noqa: B010 (typed modules refuse attribute writes)
    _register("LayerNormalization", 17, _layer_norm)
    for version in (1, 13, 15):
        _register("Shape", version, _shape)
    for version in (5, 13, 14):
        _register("Reshape", version, _reshape)
    for version in (8, 13):
        _register("Expand", version, _expand)
    for version in (11, 12, 13):
        _register("Clip", version, _clip)
    for version in (1, 9, 13):
        _register("MatMul", version, _matmul)


def _export_opset() -> int:
    """Returns the opset of the ONNX export in progress (torch keeps it in the TorchScript exporter)."""
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    return int(GLOBALS.export_onnx_opset_version)


def _register(op_type: str, version: int, converter: Any) -> None:
    """Makes `converter` the one onnx2torch uses for (op_type, version), replacing its own."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    _CONVERTER_REGISTRY[OperationDescription(domain="", operation_type=op_type, version=version)] = converter


def _layer_norm(node: Any, graph: Any) -> Any:
    """Converts LayerNormalization with constant scale (and bias) to nn.LayerNorm over the scale's shape.

    onnx2torch takes normalized_shape from the input's inferred shape, which is 0 for a symbolic dim
    (MobileViT's token count): LayerNorm([0]). The scale has the normalized dims' shape by the spec.
    """
    from onnx2torch.node_converters.layer_norm import OnnxLayerNorm
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, onnx_mapping_from_node

    attrs = node.attributes
    axis, eps = attrs.get("axis", -1), attrs.get("epsilon", 1e-5)
    names = [name for name in node.input_values[1:] if name]
    consts = [graph.initializers[name].to_torch() for name in names if name in graph.initializers]
    info = graph.value_info.get(node.input_values[0])
    rank = len(info.type.tensor_type.shape.dim) if info is not None else None
    normalized_rank = -axis if axis < 0 else None if rank is None else rank - axis
    if len(consts) != len(names) or consts[0].dim() != normalized_rank:
        # a computed or broadcast scale: onnx2torch's functional form (the scale stays a graph input)
        module = OnnxLayerNorm(axis=axis, epsilon=eps)
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))
    norm = nn.LayerNorm(list(consts[0].shape), eps=eps, elementwise_affine=True, bias=len(consts) > 1)
    with torch.no_grad():
        norm.weight.copy_(consts[0])
        if norm.bias is not None:
            norm.bias.copy_(consts[1])
    mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
    return OperationConverterResult(torch_module=norm, onnx_mapping=mapping)


def _matmul(node: Any, graph: Any) -> Any:
    """Converts MatMul(x, W) with a constant 2-D W, which is how torch exports nn.Linear on 3-D tokens,
    to nn.Linear: onnx2torch keeps W as a buffer, so a ViT's attention and MLP weights neither trained
    nor could be pruned. Other MatMuls (attention scores) stay onnx2torch's."""
    from onnx2torch.node_converters.matmul import OnnxMatMul
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, onnx_mapping_from_node

    weight = graph.initializers.get(node.input_values[1])
    if weight is None or len(weight.to_torch().shape) != 2:
        return OperationConverterResult(torch_module=OnnxMatMul(), onnx_mapping=onnx_mapping_from_node(node))
    w = weight.to_torch()  # (in, out)
    linear = nn.Linear(w.shape[0], w.shape[1], bias=False)
    with torch.no_grad():
        linear.weight.copy_(w.T)
    mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
    return OperationConverterResult(torch_module=linear, onnx_mapping=mapping)


def fuse_linear_bias(module: torch.fx.GraphModule) -> int:
    """Moves a constant bias added right after a bias-free nn.Linear into the Linear (trainable, and
    pruned with its output features); returns how many were fused."""
    from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation

    fused = 0
    for node in list(module.graph.nodes):
        linear = module.get_submodule(node.target) if node.op == "call_module" else None
        if not (isinstance(linear, nn.Linear) and linear.bias is None and len(node.users) == 1):
            continue
        add = next(iter(node.users))
        op = module.get_submodule(add.target) if add.op == "call_module" else None
        if not (isinstance(op, OnnxBinaryMathOperation) and op.math_op_function is torch.add
                and op.broadcast is None and len(add.args) == 2):
            continue
        other = add.args[1] if add.args[0] is node else add.args[0]
        bias = _constant(module, other)
        if bias is None or bias.numel() != linear.out_features or bias.shape[-1] != linear.out_features:
            continue
        linear.bias = nn.Parameter(bias.detach().reshape(-1).clone())
        add.replace_all_uses_with(node)
        module.graph.erase_node(add)
        if not other.users:  # the initializer is the Linear's now; a stale copy would be exported too
            owner, _, name = str(other.target).rpartition(".")
            delattr(module.get_submodule(owner), name)
            module.graph.erase_node(other)
        fused += 1
    if fused:
        module.recompile()
    return fused


def _constant(module: torch.fx.GraphModule, arg: Any) -> torch.Tensor | None:
    """Returns the tensor behind a get_attr graph node (an ONNX initializer), else None."""
    if not isinstance(arg, torch.fx.Node) or arg.op != "get_attr":
        return None
    value = _attr(module, str(arg.target))
    return value if isinstance(value, torch.Tensor) else None


def _attr(module: nn.Module, target: str) -> object:
    """Follows a dotted attribute path (`initializers.onnx_initializer_3`)."""
    value: object = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _clip(node: Any, graph: Any) -> Any:
    """Converts Clip (opset 11+), where an absent min or max is an empty input name.

    onnx2torch looks the empty name up as a constant and gives up ("Dynamic value of min/max"), which
    refused every `clamp(x, max=...)` (Swin V2's logit scale); computed bounds become module inputs.
    """
    from onnx2torch.node_converters.clip import _create_torch_module
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    x, *bounds = node.input_values
    names = [*bounds, "", ""][:2]
    try:
        low, high = (float(get_const_value(name, graph)) if name else None for name in names)
    except KeyError:  # a bound computed in the graph
        mapping = OnnxMapping(inputs=(x, *(name for name in names if name)), outputs=node.output_values)
        module: nn.Module = TensorClip(has_min=bool(names[0]), has_max=bool(names[1]))
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping)
    mapping = OnnxMapping(inputs=(x,), outputs=node.output_values)
    return OperationConverterResult(torch_module=_create_torch_module(low, high), onnx_mapping=mapping)


class TensorClip(nn.Module):
    """ONNX Clip with bounds computed in the graph (tensors, each optional)."""

    def __init__(self, *, has_min: bool, has_max: bool) -> None:
        super().__init__()
        self.has_min, self.has_max = has_min, has_max

    def forward(self, x: torch.Tensor, *bounds: torch.Tensor) -> torch.Tensor:
        """Clamps `x` to the given bounds (min first when both are present)."""
        given = iter(bounds)
        low = next(given) if self.has_min else None
        high = next(given) if self.has_max else None
        return torch.clamp(x, low, high)


def _shape(node: Any, graph: Any) -> Any:
    """Converts Shape (with its opset-15 start/end) to `TracedShape`."""
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    module = TracedShape(node.attributes.get("start", 0), node.attributes.get("end"))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def _reshape(node: Any, graph: Any) -> Any:
    """Converts Reshape to `TracedReshape`; allowzero=1 (a literal 0-sized dim) stays unsupported."""
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    if node.attributes.get("allowzero", 0) == 1:
        raise NotImplementedError("Reshape with allowzero=1 is not implemented")
    return OperationConverterResult(torch_module=TracedReshape(), onnx_mapping=onnx_mapping_from_node(node))


def _expand(node: Any, graph: Any) -> Any:
    """Converts Expand to `TracedExpand`."""
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    return OperationConverterResult(torch_module=TracedExpand(), onnx_mapping=onnx_mapping_from_node(node))


class TracedShape(nn.Module):
    """ONNX Shape: x's dims [start:end] as an int64 tensor, exported as a Shape that stays symbolic."""

    def __init__(self, start: int, end: int | None) -> None:
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the (rank,) int64 shape slice."""
        return shape_as_tensor(x)[self.start:self.end]


class TracedReshape(nn.Module):
    """ONNX Reshape with a shape tensor: 0 copies the input's dim, -1 is inferred."""

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """Reshapes `x` to `shape` (int64, rank-1), kept as a tensor so the export keeps it dynamic."""
        if bool((shape == 0).any()):  # a property of the graph's constant, not of the batch
            dims = shape_as_tensor(x)[: shape.shape[0]]
            shape = torch.where(shape == 0, dims, shape)
        return reshape_from_tensor_shape(x, shape)


class TracedExpand(nn.Module):
    """ONNX Expand: broadcasts `x` and `shape` both ways, as x * ones(shape) does."""

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """Returns `x` broadcast with `shape`; the dims are traced tensors, so the export keeps them."""
        dims = cast(list[int], list(shape.unbind(0)))  # 0-dim tensors serve as ints and stay traced
        ones = torch.ones(dims, dtype=x.dtype, device=x.device)
        return x * ones
