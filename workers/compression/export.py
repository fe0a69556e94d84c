"""ONNX export and its verification: a pruned model leaves the engine only as an ONNX file that
onnxruntime has shown to reproduce PyTorch on the whole validation split.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import onnxruntime as ort
import torch
import zstandard
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from torch import nn
from torch.nn.utils import parametrize, prune

from workers.compression.datasets import DatasetBundle
from workers.compression.errors import ExportMismatch, UnsupportedOp
from workers.compression.export_pools import exportable_pools
from workers.compression.float_noise import ATOL, RTOL, SLACK, degenerate, excess

__all__ = [
    "ATOL",
    "IR_VERSION",
    "OPSET",
    "RTOL",
    "TOP1_TOLERANCE",
    "Verification",
    "export_onnx",
    "finalize",
    "ort_session",
    "verify",
    "write_zstd",
]

OPSET = 17
IR_VERSION = 10  # onnx 1.23 writes IR 11 by default, which onnxruntime 1.31 refuses to load
INPUT, OUTPUT = "input", "logits"
ZSTD_LEVEL = 9  # on 90%-sparse float32: level 19 is 7.5% smaller but 24x slower (minutes on a ViT-L)
# Logit tolerance (workers/compression/float_noise.py): |ort - torch| <= ATOL + RTOL * |torch|, widened by
# 10x the model's own float32 error where a sample is past it. Both sides compute in float32, but
# onnxruntime folds BatchNorm into Conv and sums in another order (MLAS vs ATen/oneDNN kernels); on CIFAR
# ResNets that moves logits (magnitude ~1-20) by 1e-6..1e-4, while any real export error (a dropped mask, a
# wrong op, eval/train BN mix-up) moves them by far more than 1e-2. An ill-conditioned model (random-init
# RegNet-Y: 0.28 of float32 noise on 244-scale logits) cannot agree more closely than its own rounding.
TOP1_TOLERANCE = 0.001  # top-1 accuracy of ORT and torch must agree within 0.1 point
VERIFY_BATCH_SIZE = 256
# What onnxruntime raises when it cannot load or run a graph (none of them derive from RuntimeError).
ORT_ERRORS: tuple[type[Exception], ...] = (
    ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.NotImplemented, ort_errors.InvalidArgument,
    ort_errors.RuntimeException, ort_errors.InvalidProtobuf,
)


def finalize(model: nn.Module) -> nn.Module:
    """Makes `model` hold plain weights (reparametrizations folded in) with exact +0.0 zeros, in place.

    `w * mask` leaves -0.0 where w was negative; its bit pattern differs from +0.0 and costs zstd.
    """
    for module in list(model.modules()):  # a list: removing parametrizations edits the module tree
        if parametrize.is_parametrized(module):
            for name in list(cast(nn.ModuleDict, module.parametrizations).keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):  # torch.nn.utils.prune keeps w_orig * w_mask
                prune.remove(module, hook._tensor_name)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.masked_fill_(tensor == 0, 0.0)  # -0.0 == 0 is True: every zero becomes +0.0
    return model


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    """Writes `model` as ONNX with a dynamic batch axis, checked by onnx.checker.

    The model is finalized in place first (see `finalize`) and exported in eval mode, on its own device;
    its train/eval mode is given back afterwards.
    """
    finalize(model)
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.zeros(1, *input_shape, device=device)  # (1, C, H, W) or (1, F); the batch axis is dynamic
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            # The legacy TorchScript exporter warns that it is deprecated; it is 15x faster than the
            # dynamo one on these models and handles onnx2torch modules, so it is chosen on purpose.
            warnings.simplefilter("ignore", DeprecationWarning)
            # TracerWarnings say a trace might not generalize; `verify` checks what the trace actually
            # computes on every validation sample, which is the stronger test.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
            # Strided slices (option-A shortcuts, x[:, :, ::2, ::2]) are left unfolded; harmless.
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            with exportable_pools(model.eval(), example):
                torch.onnx.export(
                    model, (example,), str(path), dynamo=False, opset_version=OPSET,
                    input_names=[INPUT], output_names=[OUTPUT],
                    dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                    do_constant_folding=True,
                )
    except torch.onnx.errors.OnnxExporterError as exc:  # an op or an argument the exporter cannot express
        path.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
        raise UnsupportedOp(f"the model cannot be exported to ONNX opset {OPSET}: {first}") from None
    finally:
        model.train(was_training)
    proto = onnx.load(str(path))
    proto.ir_version = IR_VERSION
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        path.unlink(missing_ok=True)
        raise ExportMismatch(f"the exported ONNX graph is invalid (onnx.checker): {exc}") from None
    onnx.save(proto, str(path))


def write_zstd(src: Path, dst: Path, level: int = ZSTD_LEVEL) -> int:
    """Writes a zstandard-compressed copy of `src` to `dst`; returns its size in bytes."""
    blob = zstandard.ZstdCompressor(level=level).compress(src.read_bytes())
    dst.write_bytes(blob)
    return len(blob)


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    """Opens an onnxruntime CPU session with `threads` intra-op threads (one inter-op thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's optimizer notes are noise here
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Verification:
    """How closely onnxruntime reproduced PyTorch over the validation split."""

    torch_accuracy: float
    ort_accuracy: float
    max_abs_diff: float
    worst_excess: float  # max of |ort - torch| - allowed; <= 0 when every logit is in tolerance
    samples: int
    float32_noise: float = 0.0  # the largest float32-vs-float64 logit error that widened the tolerance

    @property
    def passed(self) -> bool:
        """Tells whether logits and top-1 accuracy agree within tolerance."""
        return self.worst_excess <= 0.0 and abs(self.torch_accuracy - self.ort_accuracy) <= TOP1_TOLERANCE

    def as_report(self) -> dict[str, Any]:
        """Returns the report's `verification` block."""
        return {
            "max_abs_diff": self.max_abs_diff,
            "passed": self.passed,
            "tolerance": {"atol": ATOL, "rtol": RTOL, "top1_points": TOP1_TOLERANCE * 100,
                          "float32_slack": SLACK},
            "float32_noise": self.float32_noise,
            "samples": self.samples,
            "torch_accuracy": self.torch_accuracy,
            "ort_accuracy": self.ort_accuracy,
        }


@contextmanager
def _ieee_fp32() -> Iterator[None]:
    """Turns TF32 off on CUDA for the comparison (TF32 convs differ from float32 by ~1e-3 relative)."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul  # type: ignore[attr-defined]
    saved = (conv.fp32_precision, matmul.fp32_precision)
    conv.fp32_precision, matmul.fp32_precision = "ieee", "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def verify(
    model: nn.Module, onnx_path: Path, data: DatasetBundle, *, device: torch.device, threads: int,
) -> Verification:
    """Runs torch and onnxruntime over the whole validation split; on disagreement deletes the ONNX
    file (and its `.zst` sibling) and raises ExportMismatch, so no silently wrong artifact survives."""
    try:
        session = ort_session(onnx_path, threads)
        was_training = model.training
        model.eval()
        t_correct = o_correct = seen = 0
        max_diff, worst, noise, scale, broken = 0.0, -np.inf, 0.0, 0.0, 0
        with torch.no_grad(), _ieee_fp32():
            for x, y in data.batches("val", VERIFY_BATCH_SIZE, shuffle=False, device=device):
                t_logits = model(x).float().cpu().numpy()  # (B, classes)
                o_logits = session.run([OUTPUT], {INPUT: x.cpu().numpy()})[0]  # (B, classes)
                labels = y.cpu().numpy()
                broken += int((~np.isfinite(t_logits).all(axis=1)).sum())
                diff = np.abs(o_logits - t_logits)
                max_diff = max(max_diff, float(np.max(diff, initial=0.0)))
                over, sample_noise = excess(model, x, t_logits, o_logits)
                worst, noise = max(worst, over), max(noise, sample_noise)
                scale = max(scale, float(np.max(np.abs(t_logits), initial=0.0)))
                t_correct += int((t_logits.argmax(axis=1) == labels).sum())
                o_correct += int((o_logits.argmax(axis=1) == labels).sum())
                seen += labels.shape[0]
        model.train(was_training)
    except ORT_ERRORS as exc:
        _discard(onnx_path)
        raise ExportMismatch(f"onnxruntime cannot run the exported model: {exc}") from None
    nan = not np.isfinite(max_diff) or not np.isfinite(worst)
    result = Verification(
        torch_accuracy=t_correct / max(seen, 1), ort_accuracy=o_correct / max(seen, 1),
        max_abs_diff=max_diff, worst_excess=np.inf if nan else worst, samples=seen, float32_noise=noise,
    )
    if not result.passed:
        _discard(onnx_path)
        if broken:
            raise ExportMismatch(f"the PyTorch model itself outputs NaN or Inf on {broken} of {seen} "
                                 "validation samples (its weights or BatchNorm statistics overflowed), so "
                                 "its export cannot be checked")
        if degenerate(noise, scale):
            raise ExportMismatch(f"the PyTorch model's logits (up to {scale:.3g}) move by {noise:.3g} under "
                                 "float32 rounding alone: it is numerically degenerate (weights or BatchNorm "
                                 "statistics blew up), so no float32 export can reproduce it (a pruned "
                                 "model: finetune longer or at a lower finetune.lr, or prune less)")
        raise ExportMismatch(
            f"the ONNX export does not reproduce the PyTorch model on {seen} validation samples: "
            f"max |logit diff| {max_diff:.3g} (tolerance {ATOL:g} + {RTOL:g}*|logit|), top-1 "
            f"{result.ort_accuracy:.4f} (onnxruntime) vs {result.torch_accuracy:.4f} (torch); "
            "the model likely has data-dependent control flow that tracing cannot capture"
        )
    return result


def _discard(onnx_path: Path) -> None:
    """Deletes an artifact that failed verification, with its compressed copy."""
    onnx_path.unlink(missing_ok=True)
    onnx_path.with_name(onnx_path.name + ".zst").unlink(missing_ok=True)
