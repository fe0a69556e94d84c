"""ONNX import: converted graphs match and train; external data, custom ops, bad graphs are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tests.engine.conftest import TinyResNet
from tests.engine.model_files import TinyConvNet, export_onnx, onnx_graph_file
from workers.compression import export, onnx_import
from workers.compression.errors import CompressionError, InvalidModel, UnsupportedOp
from workers.compression.onnx_batchnorm import RestoredBatchNorm2d

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


def _round_trip(path: Path, shape: tuple[int, ...], tmp_path: Path, source: nn.Module | None = None) -> None:
    """Import (matching `source` when given) -> two SGD steps -> our export -> onnxruntime parity."""
    converted = _convert(path, shape)
    x = torch.randn(3, *shape)
    if source is not None:
        with torch.no_grad():
            assert torch.allclose(converted(x), source.eval()(x), atol=1e-4, rtol=1e-3)
    converted.train()
    opt = torch.optim.SGD([p for p in converted.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    for _ in range(2):
        loss = nn.functional.cross_entropy(converted(torch.randn(4, *shape)), torch.tensor([0, 1, 2, 3]))
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    out = tmp_path / "ours.onnx"
    export.export_onnx(converted, shape, out)
    converted.eval()
    with torch.no_grad():
        expected = converted(x).numpy()
    got = export.ort_session(out, 1).run(None, {"input": x.numpy()})[0]
    assert np.allclose(got, expected, atol=export.ATOL, rtol=export.RTOL)


def _user_round_trip(model: nn.Module, shape: tuple[int, ...], tmp_path: Path) -> None:
    """Exports `model` the way a user does, then round-trips the file against it."""
    _round_trip(export_onnx(model.eval(), tmp_path / "user.onnx", shape), shape, tmp_path, model)


def test_folded_batchnorms_come_back_with_the_same_function(tmp_path: Path) -> None:
    """An eval-mode export folds each BatchNorm into its conv; the import puts every one back, and
    calibrating on the first training batch keeps the function (eval and train mode) on that batch."""
    torch.manual_seed(0)
    model = TinyResNet()
    for norm in [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]:
        with torch.no_grad():  # statistics far from identity, so folding them is not trivial
            norm.running_var.uniform_(0.2, 4.0)  # type: ignore[union-attr]
            norm.running_mean.normal_()  # type: ignore[union-attr]
    path = export_onnx(model.eval(), tmp_path / "m.onnx", SHAPE)
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    converted = _convert(path)
    restored = [m for m in converted.modules() if isinstance(m, RestoredBatchNorm2d)]
    assert len(restored) == 4
    x = torch.randn(16, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(converted(x), model(x), atol=1e-5)
        converted.train()
        assert torch.allclose(converted(x), model(x), atol=1e-4)  # first batch: calibrated, same function
    assert all(bool(m.calibrated) for m in restored)
    assert all(cast(torch.Tensor, m.running_var).min() < 0.99 for m in restored)  # the batch's statistics


def test_convs_that_had_no_batchnorm_get_none(tmp_path: Path) -> None:
    """A conv exported with its own named bias was never folded, so no BatchNorm is invented for it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    converted = _convert(export_onnx(model, tmp_path / "m.onnx", SHAPE))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())


class _TokenNorm(nn.Module):
    """Flattens with a shape computed at run time (as MobileViT does), then a LayerNorm over channels."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(3)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) to (B, 4) through (B, H*W, 3) tokens."""
        tokens = x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)  # Shape/Gather/Concat/Reshape
        out: torch.Tensor = self.fc(self.norm(tokens).mean(dim=1))
        return out


def test_layer_norm_over_symbolic_dims_and_shape_ops_round_trip(tmp_path: Path) -> None:
    """A LayerNorm whose input dims shape inference cannot know, and Shape/Gather ops that onnx2torch
    re-exports with the export's opset, both survive the whole round trip."""
    torch.manual_seed(0)
    _user_round_trip(_TokenNorm(), SHAPE, tmp_path)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # timm's own code, at the user's export
@pytest.mark.parametrize(("library", "name", "size"), [
    ("torchvision", "resnet18", 32),
    ("torchvision", "mobilenet_v3_small", 32),
    ("timm", "deit_tiny_patch16_224", 32),
    ("timm", "mobilevit_xxs", 64),
    ("timm", "ghostnet_050", 32),
])
def test_real_architectures_round_trip(library: str, name: str, size: int, tmp_path: Path) -> None:
    """ONNX exports of widely used models (random weights, 10 classes) import, train, export and match."""
    torch.manual_seed(0)
    if library == "torchvision":
        import torchvision

        model = torchvision.models.get_model(name, weights=None, num_classes=10)
    else:
        import timm

        kwargs: dict[str, Any] = {"img_size": size} if "deit" in name else {}
        model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    _user_round_trip(model, (3, size, size), tmp_path)


def _onnx_uploads() -> list[str]:
    """Every model of the coverage suite's list (torchvision, timm, Hugging Face) that it exports to ONNX."""
    from tests.coverage.harness import all_cases

    return [case.model for case in all_cases() if case.source == "onnx"]


@pytest.mark.coverage
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::UserWarning")
@pytest.mark.parametrize("model", _onnx_uploads())
def test_every_onnx_upload_round_trips_or_is_refused_by_name(model: str, tmp_path: Path) -> None:
    """The dense round trip of the coverage list's ONNX exports: passes, or a typed refusal (xfail with
    its code), never an untyped crash. A model whose own export fails at this size is not an upload."""
    from tests.coverage.harness import CLASSES, min_size
    from tests.coverage.uploads import prepare, tiny_dataset

    size = min_size(model, "onnx")
    dataset = tiny_dataset(tmp_path / "data.npz", classes=CLASSES, size=size)
    try:
        path, _ = prepare(model, "onnx", tmp_path, dataset=dataset, classes=CLASSES, size=size)
    except Exception as exc:  # the library's model or torch's exporter, before anything of ours runs
        pytest.skip(f"the model itself does not export at {size} px: {type(exc).__name__}: {exc}")
    try:
        _round_trip(path, (3, size, size), tmp_path)
    except CompressionError as exc:
        pytest.xfail(f"{exc.code}: {exc.message}")


class _SamePadClamp(nn.Module):
    """A 'same'-padded conv (exported with auto_pad) and a clamp with only an upper bound (Clip, no min)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 4, padding="same")
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) to (B, 4)."""
        out: torch.Tensor = self.fc(self.conv(x).clamp(max=0.5).mean(dim=(2, 3)))
        return out


def test_same_padding_and_one_sided_clip_round_trip(tmp_path: Path) -> None:
    """Two things onnx2torch refused on its own: auto_pad SAME_UPPER and Clip without a min."""
    torch.manual_seed(0)
    _user_round_trip(_SamePadClamp(), SHAPE, tmp_path)


class _TokenLinear(nn.Module):
    """A Linear applied to (B, H*W, C) tokens, then a mean over the tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) to (B, 4)."""
        out: torch.Tensor = self.fc(x.flatten(2).transpose(1, 2)).mean(dim=1)
        return out


def test_linear_layers_on_tokens_stay_trainable_linears(tmp_path: Path) -> None:
    """nn.Linear on (B, N, C) exports as MatMul + Add of constants; it comes back as one nn.Linear with
    its bias, so transformer weights train and can be pruned (not frozen buffers)."""
    torch.manual_seed(0)
    model = _TokenLinear()
    path = export_onnx(model, tmp_path / "m.onnx", SHAPE)
    assert "MatMul" in {n.op_type for n in onnx.load(str(path)).graph.node}
    converted = _convert(path)
    linears = [m for m in converted.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias is not None) for m in linears] == [(3, 4, True)]
    assert not any(b.shape == (4,) for b in converted.buffers())  # the bias moved into the Linear
    _user_round_trip(model, SHAPE, tmp_path)


class _StandardizedConv(nn.Conv2d):
    """timm's StdConv2d: the weight is standardized per filter by a training-mode batch norm in forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolves with the standardized weight."""
        flat = self.weight.reshape(1, self.out_channels, -1)
        weight = nn.functional.batch_norm(flat, None, None, training=True, momentum=0.0, eps=1e-6)
        out: torch.Tensor = self._conv_forward(x, weight.reshape_as(self.weight), self.bias)
        return out


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # batch_norm's batch-size check, at export
def test_weights_computed_from_parameters_are_folded(tmp_path: Path) -> None:
    """A weight the exporter left as graph arithmetic (a training-mode BatchNormalization with statistics
    outputs, which onnx2torch refuses) is folded into a plain, trainable conv weight."""
    torch.manual_seed(0)
    model = nn.Sequential(_StandardizedConv(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 4))
    path = export_onnx(model, tmp_path / "m.onnx", SHAPE)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(path)).graph.node}
    converted = _convert(path)
    assert any(isinstance(m, nn.Conv2d) for m in converted.modules())
    _user_round_trip(model, SHAPE, tmp_path)


class _ClassToken(nn.Module):
    """A ViT's class token: expanded to the batch size read from the patch tokens (an inner tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, 3, 2, 2)
        self.cls = nn.Parameter(torch.randn(1, 1, 3))
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, 3, H, W) to (B, 4) through (B, 1 + H*W/4, 3) tokens."""
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        out: torch.Tensor = self.fc(tokens[:, 0] + tokens.mean(dim=1))
        return out


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_class_token_follows_the_batch_after_re_export(tmp_path: Path) -> None:
    """Our re-export traced at batch 1 used to fold the inner Shape into [1, N, C]: onnxruntime's Concat
    then refused every other batch size. The batch now comes from the input's shape."""
    torch.manual_seed(0)
    _user_round_trip(_ClassToken(), SHAPE, tmp_path)
