"""ONNX import: converted graphs match and train; external data, custom ops, bad graphs are refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tests.engine.model_files import TinyConvNet, export_onnx, onnx_graph_file
from workers.compression import onnx_import
from workers.compression.errors import InvalidModel, UnsupportedOp

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (3, 8, 8)


def _convert(path: Path, shape: tuple[int, ...] = SHAPE) -> nn.Module:
    """Reads, validates and converts an ONNX file."""
    return onnx_import.to_torch(onnx_import.read_onnx(path), shape)


def test_converted_model_matches_and_trains(tmp_path: Path) -> None:
    """The converted module reproduces the original's logits, has trainable weights, and learns a step."""
    torch.manual_seed(0)
    model = TinyConvNet()
    path = export_onnx(model, tmp_path / "m.onnx", SHAPE)
    converted = _convert(path)
    assert not converted.training
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(converted(x), model(x), atol=1e-5)
    params = [p for p in converted.parameters() if p.requires_grad]
    assert params
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.1)
    converted.train()
    loss = nn.functional.cross_entropy(converted(x), torch.tensor([0, 1, 2, 0, 1]))
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))


def test_signature_reads_sample_shape_and_classes(tmp_path: Path) -> None:
    """The batch dim is dropped (symbolic or not); the class count comes from the output."""
    path = export_onnx(TinyConvNet(classes=5), tmp_path / "m.onnx", SHAPE)
    assert onnx_import.signature(onnx.load(str(path))) == (SHAPE, 5)
    assert onnx_import.onnx_input_shape(path) == SHAPE


def test_fixed_batch_graph_is_refused(tmp_path: Path) -> None:
    """A graph that hard-codes batch 1 cannot train on batches; the error says how to export."""

    class BatchOne(nn.Module):
        """Flattens with a literal batch size of 1."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """Maps (1, 3, 8, 8) to (1, 192)."""
            return x.reshape(1, -1)

    path = export_onnx(BatchOne(), tmp_path / "m.onnx", SHAPE, dynamic=False)
    with pytest.raises(InvalidModel, match="dynamic batch axis"):
        _convert(path)


def test_external_data_is_refused_even_when_present(tmp_path: Path) -> None:
    """Weights stored beside the file are refused, although the data file is right there."""
    path = export_onnx(TinyConvNet(), tmp_path / "m.onnx", SHAPE)
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()
    with pytest.raises(InvalidModel, match="external data"):
        onnx_import.read_onnx(path)


def test_unsupported_ops_are_named(tmp_path: Path) -> None:
    """Operators onnx2torch cannot convert are listed in one unsupported_op error."""
    path = onnx_graph_file(tmp_path / "m.onnx", ["Relu", "Cosh", "Sinh"])
    with pytest.raises(UnsupportedOp, match=r"Cosh \(opset 17\), Sinh \(opset 17\)"):
        _convert(path, (4,))


def test_supported_op_chain_converts(tmp_path: Path) -> None:
    """The same helper with convertible ops gives a working module (the refusal above is about the ops)."""
    module = _convert(onnx_graph_file(tmp_path / "m.onnx", ["Relu", "Sigmoid"]), (4,))
    assert torch.allclose(module(torch.zeros(2, 4)), torch.full((2, 4), 0.5))


def test_custom_domain_is_refused(tmp_path: Path) -> None:
    """A node from a non-standard domain is refused before any converter sees it."""
    path = onnx_graph_file(tmp_path / "m.onnx", ["Relu", "MyOp"], domain="com.example")
    with pytest.raises(UnsupportedOp, match=r"com\.example"):
        onnx_import.read_onnx(path)


def test_nms_without_torchvision_is_unsupported_op(tmp_path: Path) -> None:
    """NonMaxSuppression needs torchvision, which the engine replaces with a stub: a clean refusal."""
    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["logits"])], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", 4, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.INT64, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    _, stubbed = onnx_import._onnx2torch()
    if not stubbed:
        pytest.skip("a working torchvision is installed")
    with pytest.raises(UnsupportedOp, match=r"NonMaxSuppression.*torchvision"):
        onnx_import.to_torch(model, (4, 4))
    assert "torchvision" not in sys.modules  # the stub was only lent to onnx2torch


def test_broken_torchvision_is_replaced_by_the_stub(tmp_path: Path) -> None:
    """A torchvision that fails to import (as a CUDA build does on CPU torch) does not break the import."""
    broken = tmp_path / "site" / "torchvision"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    code = (
        "import sys\n"
        "from workers.compression.onnx_import import _onnx2torch\n"
        "module, stubbed = _onnx2torch()\n"
        "assert stubbed and module.__name__ == 'onnx2torch'\n"
        "assert 'torchvision' not in sys.modules\n"
    )
    env = {"PYTHONPATH": f"{broken.parent}:{ROOT}", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)


def test_truncated_and_invalid_graphs_are_invalid_model(tmp_path: Path) -> None:
    """A cut-off file and a graph the checker rejects are invalid_model errors."""
    path = export_onnx(TinyConvNet(), tmp_path / "m.onnx", SHAPE)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(InvalidModel):
        onnx_import.read_onnx(cut)
    dangling = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["logits"])], "g",
                                 [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 4])],
                                 [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 4])])
    bad = tmp_path / "bad.onnx"
    model = helper.make_model(dangling, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, str(bad))
    with pytest.raises(InvalidModel, match="checker"):
        onnx_import.read_onnx(bad)


def test_graph_limits_and_io_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Too many nodes, oversized tensors and two inputs are refused."""
    path = onnx_graph_file(tmp_path / "m.onnx", ["Relu", "Relu", "Relu"])
    monkeypatch.setattr(onnx_import, "MAX_NODES", 2)
    with pytest.raises(InvalidModel, match="3 nodes"):
        onnx_import.read_onnx(path)
    monkeypatch.undo()
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(torch.zeros(4, 4).numpy(), "big"))
    monkeypatch.setattr(onnx_import, "MAX_DIM", 3)
    onnx.save(model, str(path))
    with pytest.raises(InvalidModel, match="'big' has dims"):
        onnx_import.read_onnx(path)
    model.graph.input.append(helper.make_tensor_value_info("second", TensorProto.FLOAT, ["b", 4]))
    with pytest.raises(InvalidModel, match="2 inputs"):
        onnx_import.signature(model)
