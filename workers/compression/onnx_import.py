"""ONNX uploads: validate the graph as untrusted data, then convert it to a trainable torch module.

`read_onnx`, `signature` and `onnx_input_shape` need only `onnx` (no torch), so a caller can learn a
model's input shape cheaply; `to_torch` imports torch and onnx2torch when it runs, folds what the
exporter left unfolded (onnx_fold.py), reads the batch size from the input (onnx_shapes.py), spells out
SAME padding (onnx_pads.py), puts back the BatchNorms an eval-mode export folded (onnx_batchnorm.py)
and uses our fixed converters (onnx_converters.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from workers.compression.errors import InvalidModel, UnsupportedOp
from workers.compression.finite import nonfinite_count

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "MAX_ONNX_BYTES",
    "check_classes",
    "check_fits",
    "onnx_input_shape",
    "read_onnx",
    "signature",
    "to_torch",
]

MAX_ONNX_BYTES = (1 << 31) - 1  # one file, all weights inside: protobuf's own limit (ViT-L is 1.2 GB)
MAX_NODES = 20_000  # counted over every (sub)graph
MAX_INITIALIZERS = 20_000
MAX_DIM = 1 << 24  # any one tensor dimension
MAX_TENSOR_ELEMENTS = 1 << 28  # 1 GiB of float32 in one tensor
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
_FLOAT_KINDS: dict[int, str] = {onnx.TensorProto.FLOAT: "F32", onnx.TensorProto.FLOAT16: "F16",
                onnx.TensorProto.BFLOAT16: "BF16", onnx.TensorProto.DOUBLE: "F64"}
CONTROL_FLOW = frozenset({"If", "Loop", "Scan", "SequenceMap"})  # subgraphs run a data-dependent count


def read_onnx(path: Path) -> onnx.ModelProto:
    """Parses and validates an ONNX file (size, domains, no external data, bounded graph, checker)."""
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise InvalidModel(f"the ONNX file has {size} bytes; the limit is {MAX_ONNX_BYTES}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(path.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidModel(f"the file is not a readable ONNX model (truncated or corrupt: {exc})") from None
    _validate(model)
    return model


def signature(model: onnx.ModelProto) -> tuple[tuple[int | None, ...], int | None]:
    """Returns (one sample's input shape without the batch dim, class count); None marks a symbolic dim."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise InvalidModel(f"the model must have one input and one output (class logits); it has "
                           f"{len(inputs)} inputs and {len(model.graph.output)} outputs")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise InvalidModel(f"the model's input is {onnx.TensorProto.DataType.Name(tensor.elem_type)}; "
                           "it must take float32 images or features")
    dims = _dims(tensor.shape)
    if len(dims) < 2:
        raise InvalidModel(f"the model's input has rank {len(dims)}; it must be (batch, ...) with rank >= 2")
    out = _dims(model.graph.output[0].type.tensor_type.shape)
    return tuple(dims[1:]), out[-1] if len(out) == 2 else None


def check_fits(model: onnx.ModelProto, input_shape: tuple[int, ...], num_classes: int) -> int | None:
    """Refuses a model that cannot take the dataset's samples or declares too few outputs; returns them."""
    dims, classes = signature(model)
    fits = len(dims) == len(input_shape) and all(
        d in (None, s) for d, s in zip(dims, input_shape, strict=True))
    if not fits:
        shown = tuple("?" if d is None else d for d in dims)
        raise InvalidModel(f"the model takes samples of shape {shown} but the dataset's are {input_shape}")
    if classes is not None:
        check_classes(classes, num_classes)
    return classes


def check_classes(outputs: int, num_classes: int) -> None:
    """Refuses a model with fewer outputs than the dataset has classes."""
    if outputs < num_classes:
        raise InvalidModel(f"the model has {outputs} outputs but the dataset's labels go up to "
                           f"{num_classes - 1}; they must be class indices below {outputs}")


def _dims(shape: onnx.TensorShapeProto) -> list[int | None]:
    """Returns a tensor shape's dims, None for symbolic or unknown ones."""
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def onnx_input_shape(path: Path) -> tuple[int | None, ...]:
    """Returns a validated ONNX file's sample input shape (no batch dim; None if symbolic), without torch."""
    return signature(read_onnx(path))[0]


def to_torch(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> nn.Module:
    """Converts a validated model with onnx2torch and proves it runs on a zero batch of 2; float32, eval."""
    import torch
    from torch import fx

    from workers.compression.onnx_batchnorm import calibrating_batchnorms, unfold_batchnorms
    from workers.compression.onnx_converters import fuse_linear_bias
    from workers.compression.onnx_fold import fold_constants
    from workers.compression.onnx_pads import explicit_pads
    from workers.compression.onnx_shapes import batch_from_input

    onnx2torch = _onnx2torch()
    _check_convertible(model)
    try:
        prepared = _prepared(model)
        fold_constants(prepared)
        batch_from_input(prepared, input_shape)
        explicit_pads(prepared)
        unfold_batchnorms(prepared)
        module: nn.Module = onnx2torch.convert(prepared)
    except NotImplementedError as exc:
        raise UnsupportedOp(f"the ONNX graph cannot be converted for training: {exc}") from None
    except Exception as exc:  # onnx2torch raises bare errors of many kinds on graphs it cannot map
        raise InvalidModel(f"the ONNX graph could not be converted to a trainable model: {exc}") from None
    calibrating_batchnorms(module)
    fuse_linear_bias(cast(fx.GraphModule, module))
    module = module.float().eval()
    hint = "export it with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={'input': {0: 'b'}}))"
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, *input_shape))
    except Exception as exc:  # any failure of the converted graph means it is unusable
        raise InvalidModel(f"the converted model fails on a batch of 2 inputs of shape {input_shape} "
                           f"({exc}); if it was exported for batch size 1, {hint}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidModel(f"the model must output class logits of shape (batch, classes); it gave {shape}")
    if out.shape[0] != 2:
        raise InvalidModel(f"a batch of 2 inputs gave {out.shape[0]} rows of logits: the graph hard-codes "
                           f"its batch size; {hint}")
    return module


def _validate(model: onnx.ModelProto) -> None:
    """Refuses external data (anywhere, training_info included), custom domains, local functions, control
    flow, oversized graphs, and checker failures."""
    domains = {o.domain for o in model.opset_import} - STANDARD_DOMAINS
    if domains or model.functions:
        what = f"custom operator domains {sorted(domains)}" if domains else "model-local functions"
        raise UnsupportedOp(f"the model uses {what}; only standard ONNX operators are supported")
    nodes = 0
    for graph in _every_graph(model):
        nodes += len(graph.node)
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS:
                raise UnsupportedOp(f"node {node.name!r} uses operator {node.domain}::{node.op_type}; "
                                    "only standard ONNX operators are supported")
            if node.op_type in CONTROL_FLOW:
                raise UnsupportedOp(f"the graph has control flow (a {node.op_type} node); the engine trains "
                                    "only straight-line graphs (export with the branches traced away)")
    initializers = len(model.graph.initializer) + len(model.graph.sparse_initializer)
    if nodes > MAX_NODES or initializers > MAX_INITIALIZERS:
        raise InvalidModel(f"the graph has {nodes} nodes and {initializers} initializers; the limits are "
                           f"{MAX_NODES} and {MAX_INITIALIZERS}")
    for tensor in (t for graph in _top_graphs(model) for t in _tensors(graph)):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            raise InvalidModel(f"tensor {tensor.name!r} refers to external data; upload a single ONNX file "
                               "with all weights inside (onnx.save_model(..., save_as_external_data=False))")
        if any(d < 0 or d > MAX_DIM for d in tensor.dims) or math.prod(tensor.dims) > MAX_TENSOR_ELEMENTS:
            raise InvalidModel(f"tensor {tensor.name!r} has dims {list(tensor.dims)}, beyond the limits "
                               f"({MAX_DIM} per dim, {MAX_TENSOR_ELEMENTS} elements)")
        bad = _nonfinite(tensor)
        if bad:
            raise InvalidModel(f"tensor {tensor.name!r} holds {bad} NaN or infinite values; the weights must "
                               "be finite numbers")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # checker and shape inference raise several unrelated types
        raise InvalidModel(f"the ONNX checker refused the model: {exc}") from None


def _nonfinite(tensor: onnx.TensorProto) -> int:
    """Counts a stored float tensor's NaN and infinite values (raw bytes or typed fields); 0 for others."""
    kind = _FLOAT_KINDS.get(tensor.data_type)
    if kind is None:
        return 0
    raw = tensor.raw_data  # one copy out of the message, however large
    if raw:
        return nonfinite_count(raw, kind)
    if kind in ("F16", "BF16"):  # stored as their bit patterns in int32_data
        return nonfinite_count(np.asarray(tensor.int32_data, np.uint16), kind)
    values = np.asarray(tensor.double_data if kind == "F64" else tensor.float_data)
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def _top_graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """Yields the model's graph and the graphs of its `training_info` (initialization, algorithm)."""
    yield model.graph
    for info in model.training_info:
        yield from (info.initialization, info.algorithm)


def _every_graph(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """Yields every graph anywhere in the file: the top-level ones and every subgraph nested in them."""
    for top in _top_graphs(model):
        yield from _graphs(top)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """Yields a graph and every subgraph nested in its nodes' attributes (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _graphs(sub)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Yields every tensor stored anywhere in the model: initializers, sparse ones, node attributes."""
    for g in _graphs(graph):
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                for sparse in [attr.sparse_tensor] if attr.HasField("sparse_tensor") else attr.sparse_tensors:
                    yield from (sparse.values, sparse.indices)


def _check_convertible(model: onnx.ModelProto) -> None:
    """Raises UnsupportedOp naming every operator onnx2torch cannot convert."""
    from onnx2torch.node_converters import get_converter

    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    missing = set()
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        try:
            get_converter(node.op_type, opsets.get(domain, 1), domain)
        except NotImplementedError:
            missing.add(f"{domain + '::' if domain else ''}{node.op_type} (opset {opsets.get(domain, 1)})")
    if missing:
        raise UnsupportedOp(f"the model uses operators the engine cannot train: {', '.join(sorted(missing))}")


def _prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    """Returns a copy in the form onnx2torch expects: "ai.onnx" spelled "", and weights as initializers.

    torch's exporter deduplicates equal initializers (e.g. the zero biases of folded BatchNorms) into
    Identity nodes over one of them; onnx2torch needs a Conv's weight and bias to be initializers.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for opset in copy.opset_import:
        if opset.domain == "ai.onnx":
            opset.domain = ""
    graph = copy.graph
    outputs = {o.name for o in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    kept = []
    for node in graph.node:  # topologically sorted, so chains of Identity resolve in one pass
        if node.domain == "ai.onnx":
            node.domain = ""
        source = node.input[0] if node.op_type == "Identity" and node.input else ""
        if source in initializers and node.output[0] not in outputs:
            alias = onnx.TensorProto()
            alias.CopyFrom(initializers[source])
            alias.name = node.output[0]
            graph.initializer.append(alias)
            initializers[alias.name] = alias
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return copy


@functools.cache
def _onnx2torch() -> Any:
    """Imports onnx2torch once, with our converter fixes installed."""
    import onnx2torch

    from workers.compression.onnx_converters import install

    install()
    return onnx2torch
