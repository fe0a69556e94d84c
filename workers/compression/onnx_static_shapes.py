"""Static shapes for every tensor of an ONNX graph at one input shape, without running the model.

ONNX shape inference alone stops where a shape is computed inside the graph: a ViT's `Reshape` to
`[Shape(x)[0], C, H * W]`, a Swin's `Pad` by `Cast(Reshape(Slice(...)))`. Those computations work on a
handful of integers, so they are evaluated here with onnx's own numpy reference ops, but only for small
operands of shape-arithmetic operators and only when the result stays small (checked before evaluating
for the operators that make a size from a value): a `ConstantOfShape` asked for 2^29 floats is never
built. The known results become constants and inference runs again, until nothing new is learned.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from workers.compression.errors import InvalidModel

__all__ = ["infer_static"]

SMALL = 64  # elements of an operand (or a result) small enough to evaluate in shape arithmetic
_ROUNDS = 64  # inference passes at most (each one resolves the shape arithmetic that the last one unlocked)
_SHAPE_OPS = frozenset({
    "Abs", "Add", "And", "Cast", "Ceil", "Concat", "ConstantOfShape", "Div", "Equal", "Expand", "Floor",
    "Gather", "Greater", "GreaterOrEqual", "Identity", "Less", "LessOrEqual", "Max", "Min", "Mod", "Mul",
    "Neg", "Not", "Or", "Range", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSum", "Reshape", "Slice",
    "Clip", "Pow", "Round", "Sign", "Sqrt", "Squeeze", "Sub", "Tile", "Transpose", "Unsqueeze", "Where",
})


def infer_static(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """Returns a weightless copy fed (1, *input_shape), with inferred shapes and its shape arithmetic folded
    into constants; raises InvalidModel when ONNX shape inference refuses the graph."""
    copy = _weightless(model, input_shape)
    known = {t.name: numpy_helper.to_array(t) for t in copy.graph.initializer if math.prod(t.dims) <= SMALL}
    for _ in range(_ROUNDS):
        inferred = _infer(copy, input_shape)
        shapes = _static_shapes(inferred.graph)
        learned = _evaluate(inferred.graph, known, shapes)
        if not learned:
            return inferred
        _fold(copy.graph, known)
    return _infer(copy, input_shape)


def _weightless(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """Copies the model's graph without large initializers' data (shapes need only their dims; the weights
    are never copied, so a 1 GiB file costs no second GiB here), its input fixed to (1, *input_shape)."""
    source_graph = model.graph
    graph = onnx.GraphProto(name=source_graph.name)
    graph.node.extend(source_graph.node)
    graph.input.extend(source_graph.input)
    graph.output.extend(source_graph.output)
    for tensor in source_graph.initializer:
        if math.prod(tensor.dims) <= SMALL:
            graph.initializer.append(tensor)
        else:  # name, type and dims only
            graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    copy = onnx.ModelProto(ir_version=model.ir_version, graph=graph)
    copy.opset_import.extend(model.opset_import)
    initializers = {t.name for t in copy.graph.initializer}
    source = next(i for i in copy.graph.input if i.name not in initializers)
    dims = source.type.tensor_type.shape.dim
    del dims[:]
    for size in (1, *input_shape):
        dims.add().dim_value = size
    for output in copy.graph.output:  # declared output dims could contradict the batch of 1
        output.type.tensor_type.ClearField("shape")
    return copy


def _infer(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """Strict ONNX shape inference with its own data propagation."""
    try:
        return shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError, ValidationError, RuntimeError…
        raise InvalidModel(f"ONNX shape inference fails at the data's sample shape {input_shape}: "
                           f"{str(exc)[:500]}") from None


def _static_shapes(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """Returns the dims of every tensor whose shape inference found all of them."""
    shapes = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor.HasField("shape") and all(
                d.HasField("dim_value") and d.dim_value >= 0 for d in tensor.shape.dim):
            shapes[info.name] = [d.dim_value for d in tensor.shape.dim]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _evaluate(graph: onnx.GraphProto, known: dict[str, np.ndarray], shapes: dict[str, list[int]]) -> int:
    """Computes the value of each small shape-arithmetic output not known yet; returns how many."""
    learned = 0
    for node in graph.node:
        outputs = [o for o in node.output if o]
        if not outputs or all(o in known for o in outputs):
            continue
        values = _value(node, known, shapes)
        if values is not None:
            known.update(zip(outputs, values, strict=False))
            learned += 1
    return learned


def _value(node: onnx.NodeProto, known: dict[str, np.ndarray],
           shapes: dict[str, list[int]]) -> list[np.ndarray] | None:
    """Returns a node's small outputs, or None when they are not small or not computable here."""
    if node.op_type == "Shape" and node.input[0] in shapes:
        dims = shapes[node.input[0]]
        start = next((a.i for a in node.attribute if a.name == "start"), 0)
        end = next((a.i for a in node.attribute if a.name == "end"), len(dims))
        return [np.array(dims[start:end], dtype=np.int64)]
    if node.op_type == "Size" and node.input[0] in shapes:
        return [np.array(math.prod(shapes[node.input[0]]), dtype=np.int64)]
    if node.op_type == "Constant":
        return _constant(node)
    inputs = [name for name in node.input if name]
    if node.op_type not in _SHAPE_OPS or not all(name in known for name in inputs):
        return None
    operands = [known[name] for name in inputs]
    if any(a.size > SMALL for a in operands) or _makes_large(node.op_type, operands):
        return None
    try:
        feeds = {name: known[name] for name in inputs}
        results = ReferenceEvaluator(node).run(None, feeds)
    except Exception:  # an operand the reference op rejects: shape inference will say what is wrong
        return None
    arrays = [np.asarray(r) for r in results]
    return arrays if all(a.size <= SMALL for a in arrays) else None


def _constant(node: onnx.NodeProto) -> list[np.ndarray] | None:
    """Returns a Constant node's value when it is small."""
    attr = node.attribute[0] if node.attribute else None
    if attr is None or not attr.HasField("t") or math.prod(attr.t.dims) > SMALL:
        return None
    return [numpy_helper.to_array(attr.t)]


def _makes_large(op: str, operands: list[np.ndarray]) -> bool:
    """Tells whether an operator that makes a size from a value would make more than SMALL elements."""
    try:
        if op in ("ConstantOfShape", "Expand"):
            return math.prod(int(v) for v in operands[-1].reshape(-1)) > SMALL
        if op == "Tile":
            return operands[0].size * math.prod(int(v) for v in operands[1].reshape(-1)) > SMALL
        if op == "Range":
            start, limit, delta = (float(a.reshape(-1)[0]) for a in operands)
            return delta == 0 or math.ceil((limit - start) / delta) > SMALL
    except (IndexError, ValueError, OverflowError):
        return True
    return False


def _fold(graph: onnx.GraphProto, known: dict[str, np.ndarray]) -> None:
    """Replaces every node whose outputs are all known by Constant nodes holding them."""
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        outputs = [o for o in node.output if o]
        if node.op_type != "Constant" and outputs and all(o in known for o in outputs):
            nodes += [onnx.helper.make_node("Constant", [], [o], value=numpy_helper.from_array(known[o], o))
                      for o in outputs]
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
