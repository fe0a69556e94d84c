"""Folds nodes whose inputs are all constants into initializers, with onnx's reference evaluator.

torch's exporter folds most constant arithmetic but not all of it: a weight computed from parameters by a
training-mode BatchNormalization (timm's weight-standardized convs, NFNet) is left in the graph, and
onnx2torch refuses a BatchNorm with statistics outputs. Folded, the conv gets a plain trainable weight
with the same value. The evaluator is numpy code over the graph's own tensors: nothing is executed
beyond ONNX operators, and each folded tensor is bounded in size.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

__all__ = ["fold_constants"]

MAX_FOLDED_ELEMENTS = 1 << 24  # a folded tensor may not be bigger than this (64 MiB of float32)
# Never folded: random ops (a fold would freeze one draw), control flow, and what onnx2torch needs to see.
KEEP = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                  "Bernoulli", "If", "Loop", "Scan", "Constant", "Identity", "Shape", "Size"})


def fold_constants(model: onnx.ModelProto) -> int:
    """Replaces, in place, every foldable node whose inputs are all initializers; returns how many."""
    graph = model.graph
    opsets = list(model.opset_import)
    constants = {t.name: t for t in graph.initializer}
    kept: list[onnx.NodeProto] = []
    folded = 0
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:  # its tensor feeds folds; the node stays
            constants[node.output[0]] = _named(value, node.output[0])
        inputs = [name for name in node.input if name]
        if node.op_type in KEEP or node.domain not in ("", "ai.onnx") or not inputs \
                or any(name not in constants for name in inputs):
            kept.append(node)
            continue
        values = _evaluate(node, [constants[name] for name in inputs], opsets)
        if values is None:
            kept.append(node)
            continue
        for name, value in values.items():
            tensor = numpy_helper.from_array(value, name)
            graph.initializer.append(tensor)
            constants[name] = tensor
        folded += 1
    del graph.node[:]
    graph.node.extend(kept)
    return folded


def _evaluate(
    node: onnx.NodeProto, inputs: list[onnx.TensorProto], opsets: list[onnx.OperatorSetIdProto],
) -> dict[str, np.ndarray] | None:
    """Runs one node on constant inputs; None when the evaluator cannot, or an output could be too big
    (sizes are inferred before anything is computed, so ConstantOfShape([1e12]) never allocates)."""
    outputs = [name for name in node.output if name]
    infos = [helper.make_tensor_value_info(name, 0, None) for name in outputs]
    graph = helper.make_graph([node], "fold", [], infos, initializer=inputs)
    model = helper.make_model(graph, opset_imports=opsets)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        shapes = {v.name: v.type.tensor_type.shape for v in inferred.graph.output}
        sizes = [[d.dim_value if d.HasField("dim_value") else -1 for d in shapes[o].dim] for o in outputs]
        if any(min(dims, default=0) < 0 or math.prod(dims) > MAX_FOLDED_ELEMENTS for dims in sizes):
            return None
        results = ReferenceEvaluator(model).run(None, {})
    except Exception:  # an op that inference or the evaluator lacks or refuses: the node stays
        return None
    return {name: np.asarray(value) for name, value in zip(outputs, results, strict=True)}


def _named(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    """Returns a copy of `tensor` under another name."""
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.name = name
    return copy
