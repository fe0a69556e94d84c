"""What an ONNX model costs before anything runs it: weight bytes, activation bytes and FLOPs per sample.

Computed from the graph alone (onnx only, no torch, no onnxruntime): static shapes at the data's
sample shape with a batch of 1 (`onnx_static_shapes`), then a sum over the nodes. A graph whose every
intermediate tensor does not come out with a static, bounded shape is refused: a size it will only learn
at run time (a data-dependent `NonZero`) is a size nobody can bound. The upload sandbox (`validate.py`),
the worker's loader and pre-flight call `estimate_onnx_cost`; `cost.check_cost` holds an estimate against
the limits and refuses with `model_too_costly`, the estimate in the message.

Activation bytes count every tensor a forward pass produces (training keeps them for the backward pass),
so they are the peak of a training step per sample, over-counting what inference would hold at once.
"""

from __future__ import annotations

import math

import onnx
from onnx import helper

from workers.compression.cost import ModelCost
from workers.compression.errors import InvalidModel, ModelTooCostly
from workers.compression.onnx_static_shapes import infer_static

__all__ = ["MAX_ACTIVATION_ELEMENTS", "estimate_onnx_cost"]

MAX_ACTIVATION_ELEMENTS = 1 << 28  # one intermediate tensor of one sample: 1 GiB of float32
_POOLS = frozenset({"MaxPool", "AveragePool", "LpPool"})
_RECURRENT = frozenset({"LSTM", "GRU", "RNN"})


def estimate_onnx_cost(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> ModelCost:
    """Estimates a validated model's cost for samples of `input_shape` (no batch dim); refuses a graph whose
    tensor sizes cannot be inferred statically or exceed MAX_ACTIVATION_ELEMENTS per sample."""
    inferred = infer_static(model, input_shape).graph
    shapes: dict[str, tuple[list[int], int]] = {}
    for info in [*inferred.input, *inferred.value_info, *inferred.output]:
        typed = _static(info)
        if typed is not None:
            shapes[info.name] = typed
    params = 0
    for tensor in model.graph.initializer:
        params += math.prod(tensor.dims) * _itemsize(tensor.data_type)
        shapes[tensor.name] = (list(tensor.dims), tensor.data_type)
    activations = flops = 0
    for node in model.graph.node:
        outputs = [name for name in node.output if name]
        missing = [name for name in outputs if name not in shapes]
        if missing:
            raise InvalidModel(f"the size of {missing[0]!r} (output of {_label(node)}) "
                               "cannot be inferred before running the model; only graphs whose tensor "
                               "shapes follow from the input shape are accepted")
        for name in outputs:
            dims, dtype = shapes[name]
            if math.prod(dims) > MAX_ACTIVATION_ELEMENTS:
                raise ModelTooCostly(f"{_label(node)} makes a tensor of shape {dims} for "
                                     f"one sample ({math.prod(dims)} elements; the limit is "
                                     f"{MAX_ACTIVATION_ELEMENTS})")
            if node.op_type == "Constant":
                params += math.prod(dims) * _itemsize(dtype)
            else:
                activations += math.prod(dims) * _itemsize(dtype)
        flops += _flops(node, shapes)
    return ModelCost(params, activations, flops)


def _label(node: onnx.NodeProto) -> str:
    """Names a node in a message: its op and its name, if it has one."""
    return f"{node.op_type} node {node.name!r}" if node.name else f"an unnamed {node.op_type} node"


def _static(info: onnx.ValueInfoProto) -> tuple[list[int], int] | None:
    """Returns (dims, element type) of a tensor whose every dim is a known size, else None."""
    if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return None
    dims = info.type.tensor_type.shape.dim
    if any(not d.HasField("dim_value") or d.dim_value < 0 for d in dims):
        return None
    return [d.dim_value for d in dims], info.type.tensor_type.elem_type


def _itemsize(dtype: int) -> int:
    """Bytes per element of an ONNX tensor type (strings and unknowns count 8)."""
    try:
        return int(helper.tensor_dtype_to_np_dtype(dtype).itemsize) or 8
    except (KeyError, TypeError, ValueError):
        return 8


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    """Returns an integer attribute of a node."""
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _ints(node: onnx.NodeProto, name: str) -> list[int]:
    """Returns an integer-list attribute of a node (empty when absent)."""
    return next((list(a.ints) for a in node.attribute if a.name == name), [])


def _flops(node: onnx.NodeProto, shapes: dict[str, tuple[list[int], int]]) -> int:
    """FLOPs of one node at batch 1: multiply-adds of the compute-heavy ops, one per element otherwise."""
    def dims(i: int) -> list[int]:
        name = node.input[i] if i < len(node.input) else ""
        return shapes[name][0] if name in shapes else []

    out = math.prod(shapes[node.output[0]][0]) if node.output and node.output[0] in shapes else 0
    op = node.op_type
    if op == "Conv" and len(dims(1)) >= 3:
        return 2 * out * math.prod(dims(1)[1:])  # each output: C_in/group x kernel multiply-adds
    if op == "ConvTranspose" and len(dims(1)) >= 3:
        return 2 * math.prod(dims(0)) * math.prod(dims(1)[1:])  # each input: C_out/group x kernel
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul") and dims(0):
        return 2 * out * dims(0)[-1]
    if op == "Gemm" and len(dims(0)) == 2:
        return 2 * out * dims(0)[0 if _attr(node, "transA", 0) else 1]
    if op == "Einsum":
        return 2 * _einsum_space(node, [dims(i) for i in range(len(node.input))], out)
    if op in _POOLS:
        return out * max(1, math.prod(_ints(node, "kernel_shape")))
    if op in _RECURRENT:
        weights = math.prod(dims(1)) + math.prod(dims(2))
        steps = dims(0)[0] if dims(0) else 1
        return 2 * steps * max(1, dims(0)[1] if len(dims(0)) > 1 else 1) * weights
    inputs = sum(math.prod(dims(i)) for i in range(len(node.input)) if dims(i))
    return max(out, inputs if op.startswith(("Reduce", "Global")) or op in ("Softmax", "LogSoftmax") else 0)


def _einsum_space(node: onnx.NodeProto, operands: list[list[int]], out: int) -> int:
    """The size of an Einsum's iteration space: the product of every distinct index's extent."""
    equation = next((a.s.decode() for a in node.attribute if a.name == "equation"), "")
    terms = equation.replace(" ", "").split("->")[0].split(",")
    if "." in equation or len(terms) != len(operands):
        return max([out, *(math.prod(d) for d in operands if d)])  # ellipses: at least one pass over each
    extent: dict[str, int] = {}
    for term, shape in zip(terms, operands, strict=True):
        for label, size in zip(term, shape, strict=False):
            extent[label] = max(extent.get(label, 1), size)
    return math.prod(extent.values())

