"""Test helpers that write real model files: tiny ONNX graphs and the code-carrying formats we refuse."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

__all__ = ["REFUSED_WRITERS", "TinyConvNet", "export_onnx", "onnx_graph_file"]


class TinyConvNet(nn.Module):
    """Conv-BN-ReLU, global pool, linear: the smallest image classifier with every layer kind we train."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) to (B, classes)."""
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        out: torch.Tensor = self.fc(h)
        return out


def export_onnx(model: nn.Module, path: Path, shape: tuple[int, ...], *, dynamic: bool = True) -> Path:
    """Exports `model` for samples of `shape` with the legacy exporter, opset 17 and IR 10."""
    model.eval()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    torch.onnx.export(model, (torch.zeros(1, *shape),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes=axes)
    proto = onnx.load(str(path))
    proto.ir_version = 10
    onnx.save(proto, str(path))
    return path


def onnx_graph_file(path: Path, ops: list[str], *, domain: str = "", features: int = 4) -> Path:
    """Writes a valid ONNX chain of unary ops over a (batch, features) float input."""
    names = ["input"] + [f"t{i}" for i in range(len(ops) - 1)] + ["logits"]
    nodes = [helper.make_node(op, [names[i]], [names[i + 1]], domain=domain) for i, op in enumerate(ops)]
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", features])],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    onnx.save(model, str(path))
    return path


class _Marker:
    """A pickle payload that would create a file if anyone ever unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        """Tells pickle to call open(marker, "w") on load: the code execution we must never allow."""
        return open, (str(self.marker), "w")


def _pickle_writer(protocol: int) -> Callable[[Path, Path], None]:
    """Returns a writer of a raw pickle with the given protocol."""
    def write(path: Path, marker: Path) -> None:
        path.write_bytes(pickle.dumps({"weight": _Marker(marker)}, protocol=protocol))
    return write


def _torch_save(path: Path, marker: Path) -> None:
    """Writes a torch.save zip (data.pkl inside) whose pickle would create `marker`."""
    torch.save({"weight": torch.zeros(2), "payload": _Marker(marker)}, str(path))


def _torch_save_legacy(path: Path, marker: Path) -> None:
    """Writes the pre-1.6 torch.save format: a bare pickle stream."""
    torch.save({"weight": torch.zeros(2), "payload": _Marker(marker)}, str(path),
               _use_new_zipfile_serialization=False)


def _torchscript(path: Path, _marker: Path) -> None:
    """Writes a real TorchScript archive."""
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))


def _pt2(path: Path, _marker: Path) -> None:
    """Writes a real torch.export .pt2 archive."""
    program = torch.export.export(nn.Linear(2, 2), (torch.zeros(1, 2),))
    torch.export.save(program, str(path))


# (file name, writer, words the refusal must contain): names only decorate, the content is what is sniffed
REFUSED_WRITERS: list[tuple[str, Callable[[Path, Path], None], str]] = [
    *[(f"model{i}.pkl", _pickle_writer(i), "pickle") for i in range(6)],
    ("model.pt", _torch_save, "torch.save"),
    ("model.pth", _torch_save_legacy, "pickle"),
    ("model.ts", _torchscript, "TorchScript"),
    ("model.pt2", _pt2, "torch.export"),
]
