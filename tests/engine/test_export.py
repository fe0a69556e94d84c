"""ONNX export: plain weights, checker-clean, dynamic batch, verified parity, and no artifact when wrong."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import patch

import numpy as np
import onnx
import pytest
import torch
import zstandard
from onnx import numpy_helper
from torch import nn
from torch.nn.utils import prune

from tests.engine.conftest import IMAGE_SHAPE, TinyResNet
from workers.compression.datasets import DatasetBundle
from workers.compression.errors import ExportMismatch, UnsupportedOp
from workers.compression.export import (
    IR_VERSION,
    OPSET,
    export_onnx,
    finalize,
    ort_session,
    verify,
    write_zstd,
)

CPU = torch.device("cpu")


class TraceTrap(nn.Module):
    """Branches on the data: tracing with zeros records one branch, real data takes the other."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyResNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the logits, negated when the batch mean is positive (a trace cannot capture this)."""
        logits: torch.Tensor = self.net(x)
        return -logits if float(x.mean()) > 0.0 else logits


def test_export_is_checker_clean_with_dynamic_batch(tmp_path: Path, trained_cnn: TinyResNet) -> None:
    """The file has the pinned opset and IR version, passes onnx.checker, and runs at any batch size."""
    path = tmp_path / "m.onnx"
    export_onnx(trained_cnn, IMAGE_SHAPE, path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == IR_VERSION
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    session = ort_session(path, threads=1)
    for batch in (1, 5):
        x = torch.randn(batch, *IMAGE_SHAPE)
        (out,) = session.run(None, {"input": x.numpy()})
        assert out.shape == (batch, 4)
        np.testing.assert_allclose(out, trained_cnn(x).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_verify_passes_on_the_whole_validation_split(
    tmp_path: Path, trained_cnn: TinyResNet, image_data: DatasetBundle,
) -> None:
    """Torch and onnxruntime agree: same accuracy, logits well within tolerance, over every val sample."""
    path = tmp_path / "m.onnx"
    export_onnx(trained_cnn, IMAGE_SHAPE, path)
    result = verify(trained_cnn, path, image_data, device=CPU, threads=1)
    assert result.passed
    assert result.samples == image_data.x_val.shape[0]
    assert result.torch_accuracy == result.ort_accuracy
    assert result.torch_accuracy > 0.8  # the trained model, not an untrained one: agreement means something
    assert result.max_abs_diff < 1e-4
    report = result.as_report()
    assert report["passed"] is True
    assert set(report["tolerance"]) == {"atol", "rtol", "top1_points", "float32_slack"}
    assert report["float32_noise"] == 0.0  # every logit was within the fixed tolerance


class Cancelling(nn.Module):
    """Ill-conditioned on purpose: a BatchNorm subtracts a 3e4 offset the conv adds, so float32 rounding of
    the offset (ulp 2e-3, scaled 10x by the BN) moves torch's logits by ~1e-2, far beyond ATOL + RTOL*|1|."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 4)
        with torch.no_grad():
            self.conv.bias.fill_(3e4)
            self.bn.running_mean.fill_(3e4)
            self.bn.running_var.fill_(1e-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns 4 logits of magnitude ~1."""
        logits: torch.Tensor = self.head(self.bn(self.conv(x)).mean((2, 3)))
        return logits


def test_a_model_float32_cannot_compute_closely_is_judged_by_its_own_rounding(
    tmp_path: Path, image_data: DatasetBundle,
) -> None:
    """onnxruntime folds the BN into the conv and lands nearer the float64 logits than torch does: beyond
    the fixed tolerance, within 10x the model's own float32 error, so it passes and says so."""
    torch.manual_seed(0)
    model = Cancelling().eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, IMAGE_SHAPE, path)
    result = verify(model, path, image_data, device=CPU, threads=1)
    assert result.max_abs_diff > 5e-3  # out of ATOL + RTOL*|logit| for logits of magnitude ~1
    assert result.passed
    assert result.as_report()["float32_noise"] > 1e-3
    assert model.conv.weight.dtype == torch.float32  # given back in float32 after the float64 check


def test_a_wrong_export_raises_and_leaves_no_files(tmp_path: Path, image_data: DatasetBundle) -> None:
    """A trace that silently differs from eager PyTorch is caught; the .onnx and .zst are deleted."""
    torch.manual_seed(0)
    model = TraceTrap().eval()
    path = tmp_path / "model.onnx"
    export_onnx(model, IMAGE_SHAPE, path)
    write_zstd(path, tmp_path / "model.onnx.zst")
    with pytest.raises(ExportMismatch, match="does not reproduce"):
        verify(model, path, image_data, device=CPU, threads=1)
    assert list(tmp_path.iterdir()) == []


def test_an_unloadable_file_is_an_export_mismatch(tmp_path: Path, image_data: DatasetBundle) -> None:
    """A corrupt ONNX file fails verification with the typed error and is removed."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x0a not a model")
    with pytest.raises(ExportMismatch, match="onnxruntime cannot run"):
        verify(TinyResNet(), path, image_data, device=CPU, threads=1)
    assert not path.exists()


def test_finalize_strips_reparametrization_and_negative_zeros(tmp_path: Path) -> None:
    """torch.nn.utils.prune masks are folded into plain weights, and -0.0 becomes +0.0 in the ONNX file."""
    torch.manual_seed(0)
    model = TinyResNet().eval()
    prune.l1_unstructured(model.conv1, name="weight", amount=0.5)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        model.conv2.weight.mul_(model.conv2.weight > 0)  # w * mask: negative weights become -0.0
    assert torch.signbit(model.conv2.weight[model.conv2.weight == 0]).any()
    path = tmp_path / "m.onnx"
    export_onnx(model, IMAGE_SHAPE, path)
    initializers = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    assert not any(np.signbit(a[a == 0]).any() for a in initializers if a.dtype == np.float32)
    finalize(model)
    assert not hasattr(model.conv1, "weight_orig")
    assert isinstance(model.conv1.weight, nn.Parameter)
    assert int((model.conv1.weight == 0).sum()) == model.conv1.weight.numel() // 2
    assert not torch.signbit(model.conv2.weight[model.conv2.weight == 0]).any()


def test_zstd_copy_round_trips(tmp_path: Path, trained_cnn: TinyResNet) -> None:
    """The .zst file decompresses to the exact ONNX bytes and reports its own size."""
    path = tmp_path / "m.onnx"
    export_onnx(trained_cnn, IMAGE_SHAPE, path)
    size = write_zstd(path, tmp_path / "m.onnx.zst")
    blob = (tmp_path / "m.onnx.zst").read_bytes()
    assert size == len(blob)
    assert zstandard.ZstdDecompressor().decompress(blob) == path.read_bytes()


@pytest.mark.parametrize("side", [4, 8])
def test_adaptive_pools_without_an_onnx_form_export_exactly(tmp_path: Path, side: int) -> None:
    """A 6x6 adaptive pool over a 1x1 or 2x2 map (AlexNet and VGG at 64 px) exports as matmuls that
    match PyTorch; the model keeps its own pool afterwards."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.AdaptiveAvgPool2d((6, 6)), nn.Flatten(),
                          nn.Linear(144, 2)).eval()
    export_onnx(model, (3, side, side), tmp_path / "m.onnx")
    assert isinstance(model[1], nn.AdaptiveAvgPool2d)
    x = torch.randn(3, 3, side, side)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)


class _Spectrum(nn.Module):
    """A model using an op the ONNX exporter has no form for (2-D FFT)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns two spectral magnitudes per sample."""
        return torch.fft.fft2(x).abs().flatten(1)[:, :2]


def test_an_op_the_exporter_cannot_express_is_unsupported_op(tmp_path: Path) -> None:
    """The exporter's refusal is a typed unsupported_op naming the op, not internal; no file is left."""
    with pytest.raises(UnsupportedOp, match="fft_fft2"):
        export_onnx(_Spectrum(), (3, 4, 4), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_degenerate_model_is_named_as_such(tmp_path: Path, image_data: DatasetBundle) -> None:
    """Where float32 rounding alone moves the logits by a sizeable share of their scale (a random
    EfficientNet-V2-M after pruning and three finetune steps: 3.9e7 of noise on 6.5e7-scale logits), the
    refusal says the model is degenerate, not that tracing missed control flow."""
    torch.manual_seed(0)
    model = TinyResNet().eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, IMAGE_SHAPE, path)
    with patch("workers.compression.export.excess", return_value=(1.0, 1e9)), \
            pytest.raises(ExportMismatch, match="numerically degenerate"):
        verify(model, path, image_data, device=CPU, threads=1)
    assert not path.exists()


def test_a_model_that_outputs_nan_is_named_as_such(tmp_path: Path, image_data: DatasetBundle) -> None:
    """A model whose BatchNorm statistics overflowed gives NaN logits: the refusal says that, not that
    tracing missed control flow."""
    torch.manual_seed(0)
    model = TinyResNet().eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, IMAGE_SHAPE, path)
    norm = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    norm.running_var.fill_(float("nan"))
    with pytest.raises(ExportMismatch, match="outputs NaN or Inf on"):
        verify(model, path, image_data, device=CPU, threads=1)
