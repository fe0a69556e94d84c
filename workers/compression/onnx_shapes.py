"""Makes the batch size that a graph reads from an intermediate tensor's Shape come from the input's.

`B, N, C = x.shape` inside a model exports as Shape(x) -> Gather; a ViT expands its class token to that
B. After conversion our re-export traces with batch 1 and torch's exporter types the intermediate
tensors with static sizes wherever its shape inference loses the batch symbol, then folds Shape(x) into
the constant [1, N, C]: the class token stays at batch 1 and onnxruntime's Concat fails on any other
batch. Reading dim 0 from Shape(input) keeps it symbolic (the input's batch axis is declared dynamic);
the other dims still come from Shape(x), so a pruned channel count is never baked in.

Which Shape outputs carry the batch is measured, not guessed: onnxruntime runs the graph at batch 1 and
2, and a Shape whose dim 0 is k and 2k with every other dim unchanged gets dim 0 = k * batch.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["batch_from_input"]

MAX_IR_VERSION = 10  # onnxruntime 1.31 refuses the IR 11 that onnx 1.23 writes by default
SUFFIX = "secateur_batch"


def batch_from_input(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> int:
    """Rewrites, in place, each batch-carrying Shape of an intermediate tensor; returns how many."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    source = next(i.name for i in graph.input if i.name not in initializers)
    shapes = [n for n in graph.node if n.op_type == "Shape" and n.input[0] != source and _whole(n)]
    if not shapes:
        return 0
    factors = _batch_factors(model, source, [n.output[0] for n in shapes], input_shape)
    input_batch = f"{source}/{SUFFIX}"
    nodes: list[onnx.NodeProto] = [
        helper.make_node("Shape", [source], [f"{input_batch}/shape"], name=f"{input_batch}/Shape"),
        helper.make_node("Slice", [f"{input_batch}/shape", f"{input_batch}/0", f"{input_batch}/1"],
                         [input_batch], name=f"{input_batch}/Slice"),
    ]
    graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), f"{input_batch}/0"),
                              numpy_helper.from_array(np.array([1], np.int64), f"{input_batch}/1"),
                              numpy_helper.from_array(np.array([1 << 62], np.int64), f"{input_batch}/end")])
    rewritten = 0
    for node in graph.node:
        factor = factors.get(node.output[0]) if node.op_type == "Shape" else None
        if factor is None:
            nodes.append(node)
            continue
        nodes.extend(_rewrite(node, input_batch, factor, graph))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def _whole(node: onnx.NodeProto) -> bool:
    """Tells whether a Shape node returns every dim (no opset-15 start/end slicing)."""
    return all(a.name not in ("start", "end") or (a.name == "start" and a.i == 0) for a in node.attribute)


def _batch_factors(
    model: onnx.ModelProto, source: str, names: list[str], input_shape: tuple[int, ...],
) -> dict[str, int]:
    """Runs the graph at batch 1 and 2 and returns {Shape output: k} for those whose dim 0 is k * batch."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.ir_version = min(probe.ir_version, MAX_IR_VERSION)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.INT64, None) for n in names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    rng = np.random.default_rng(0)
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        one, two = (session.run(names, {source: rng.standard_normal((b, *input_shape)).astype(np.float32)})
                    for b in (1, 2))
    except Exception:  # onnxruntime's errors share no base; a graph it cannot run is left as it is
        return {}
    factors = {}
    for name, a, b in zip(names, one, two, strict=True):
        if a.ndim == 1 and a.shape == b.shape and a.size and a[0] > 0 and b[0] == 2 * a[0] \
                and np.array_equal(a[1:], b[1:]):
            factors[name] = int(a[0])
    return factors


def _rewrite(
    node: onnx.NodeProto, input_batch: str, factor: int, graph: onnx.GraphProto,
) -> list[onnx.NodeProto]:
    """Returns nodes computing Concat(factor * batch, Shape(x)[1:]) into the Shape node's output."""
    base = f"{node.output[0]}/{SUFFIX}"
    batch = input_batch
    nodes = []
    if factor != 1:
        graph.initializer.append(numpy_helper.from_array(np.array([factor], np.int64), f"{base}/factor"))
        nodes.append(helper.make_node("Mul", [input_batch, f"{base}/factor"], [f"{base}/batch"],
                                      name=f"{base}/Mul"))
        batch = f"{base}/batch"
    nodes += [
        helper.make_node("Shape", [node.input[0]], [f"{base}/shape"], name=f"{base}/Shape"),
        helper.make_node("Slice", [f"{base}/shape", f"{input_batch}/1", f"{input_batch}/end"],
                         [f"{base}/rest"], name=f"{base}/Slice"),
        helper.make_node("Concat", [batch, f"{base}/rest"], [node.output[0]], name=f"{base}/Concat", axis=0),
    ]
    return nodes
