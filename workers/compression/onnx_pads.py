"""Spells out `auto_pad="SAME_*"` as explicit pads, which onnx2torch's Conv and pooling converters need.

torch exports `nn.Conv2d(..., padding="same")` (ConvMixer) with auto_pad SAME_UPPER; the pads follow from
the input's spatial size, which ONNX shape inference knows for image models with a fixed input size.
"""

from __future__ import annotations

import math

import onnx
from onnx import helper

__all__ = ["explicit_pads"]

PADDED_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"})
SAME = (b"SAME_UPPER", b"SAME_LOWER")


def explicit_pads(model: onnx.ModelProto) -> int:
    """Replaces auto_pad SAME_UPPER/SAME_LOWER by pads wherever the input's spatial dims are known."""
    nodes = [n for n in model.graph.node if n.op_type in PADDED_OPS and _auto_pad(n) in SAME]
    if not nodes:
        return 0
    inferred = onnx.shape_inference.infer_shapes(model)
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in [*inferred.graph.value_info, *inferred.graph.input]}
    done = 0
    for node in nodes:
        known = dims.get(node.input[0], [])[2:]
        kernel = _ints(node, "kernel_shape") or _weight_kernel(model, node)
        spatial = [d for d in known if d is not None]
        if not spatial or len(spatial) != len(known) or kernel is None or node.op_type == "ConvTranspose":
            continue  # left to the converter, which refuses it by name
        strides = _ints(node, "strides") or [1] * len(kernel)
        dilations = _ints(node, "dilations") or [1] * len(kernel)
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            low = total // 2 if _auto_pad(node) == b"SAME_UPPER" else total - total // 2
            begins.append(low)
            ends.append(total - low)
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("pads", begins + ends)])
        done += 1
    return done


def _auto_pad(node: onnx.NodeProto) -> bytes:
    """Returns the node's auto_pad setting (NOTSET when absent)."""
    return next((a.s for a in node.attribute if a.name == "auto_pad"), b"NOTSET")


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    """Returns an ints attribute, or None when the node does not set it."""
    return next((list(a.ints) for a in node.attribute if a.name == name), None)


def _weight_kernel(model: onnx.ModelProto, node: onnx.NodeProto) -> list[int] | None:
    """Returns a Conv's kernel size from its weight initializer's dims (O, I, k...)."""
    name = node.input[1] if len(node.input) > 1 else None
    weight = next((t for t in model.graph.initializer if t.name == name), None)
    return list(weight.dims[2:]) if weight is not None else None
