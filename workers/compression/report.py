"""report.json: what a compression did and what it achieved, in the shape DESIGN.md fixes.

Pure assembly from measured pieces; every figure is computed elsewhere (export, measure, training).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workers.compression.config import JobConfig
from workers.compression.export import IR_VERSION, OPSET, Verification
from workers.compression.manifest import build_manifest
from workers.compression.measure import ParamCounts
from workers.compression.methods.base import MethodResult
from workers.compression.methods.masks import weight_layers

__all__ = ["REPORT_KEYS", "SCHEMA_VERSION", "SIDE_KEYS", "Side", "build_report", "environment", "sha256_file"]

SCHEMA_VERSION = 1
# The keys DESIGN.md promises (tests hold the report to them); more may follow them.
REPORT_KEYS = (
    "baseline", "pruned", "verification", "layers", "history", "method", "environment", "inputs",
    "timings_s", "config", "target",
)
SIDE_KEYS = (
    "accuracy", "ort_accuracy", "params", "nonzero_params", "flops", "onnx_bytes", "onnx_zstd_bytes",
    "latency_ms",
)
UNITS = {
    "accuracy": "top-1 fraction of the validation split, in [0, 1]",
    "flops": "multiply-accumulates (MACs) of Conv and Linear layers per sample; zeros inside dense "
             "weights count, since a dense runtime computes them",
    "latency_ms": "median wall-clock ms of one onnxruntime CPUExecutionProvider run; baseline and pruned "
                  "measured alternately with the same thread count",
    "onnx_zstd_bytes": "size of the ONNX file compressed with zstandard level 19",
}


@dataclass(frozen=True)
class Side:
    """Everything measured on one model (the dense baseline or the pruned result)."""

    verification: Verification
    counts: ParamCounts
    macs: int
    onnx_bytes: int
    onnx_zstd_bytes: int
    latency_ms: dict[str, float]

    def block(self) -> dict[str, Any]:
        """Returns the report's `baseline` / `pruned` block."""
        return {
            "accuracy": self.verification.torch_accuracy,
            "ort_accuracy": self.verification.ort_accuracy,
            "params": self.counts.params,
            "nonzero_params": self.counts.nonzero_params,
            "prunable_params": self.counts.prunable,
            "prunable_nonzero": self.counts.prunable_nonzero,
            "flops": self.macs,
            "onnx_bytes": self.onnx_bytes,
            "onnx_zstd_bytes": self.onnx_zstd_bytes,
            "latency_ms": dict(self.latency_ms),
        }


def sha256_file(path: Path) -> str:
    """Returns the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    """Returns the versions and execution settings that a result depends on."""
    versions = {
        name: importlib.metadata.version(dist)
        for name, dist in (
            ("torch", "torch"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
            ("torch_pruning", "torch-pruning"), ("numpy", "numpy"),
        )
    }
    return {
        "python": platform.python_version(),
        **versions,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": threads,
        "onnx_opset": OPSET,
        "onnx_ir_version": IR_VERSION,
        "latency_provider": "CPUExecutionProvider",
    }


def default_layers(model: nn.Module) -> list[dict[str, Any]]:
    """Per-layer density of every Conv/Linear weight, for methods that report no layers themselves."""
    rows = []
    for name, kind, weight in weight_layers(model):
        nonzero = int(torch.count_nonzero(weight))
        rows.append({
            "name": name, "kind": kind, "channels": int(weight.shape[0]), "params": weight.numel(),
            "nonzero": nonzero, "density": nonzero / weight.numel(),
        })
    return rows


def _achieved(baseline: Side, pruned: Side) -> dict[str, float]:
    """Returns what the pruning reached, measured against the dense baseline."""
    b, p = baseline.counts, pruned.counts
    return {
        "sparsity": 1.0 - p.prunable_nonzero / max(b.prunable, 1),  # over Conv/Linear weights
        "sparsity_all_params": 1.0 - p.nonzero_params / max(b.params, 1),
        "compression_ratio": b.params / max(p.nonzero_params, 1),  # params / nonzeros
        "params_reduction": b.params / max(p.params, 1),  # physical size: moves only when structure shrinks
        "flops_reduction": baseline.macs / max(pruned.macs, 1),
    }


def _notes(achieved: dict[str, float]) -> list[str]:
    """Returns plain-language caveats a reader of the figures needs."""
    notes = []
    if achieved["sparsity"] > 0.0 and achieved["params_reduction"] == 1.0:
        notes.append(
            "unstructured sparsity: zeros stay inside dense tensors, so FLOPs and dense-runtime latency do "
            "not drop; the zstd-compressed file shrinks, and sparse-aware runtimes can exploit the zeros"
        )
    return notes


def build_report(
    *,
    config: JobConfig,
    baseline: Side,
    pruned: Side,
    result: MethodResult,
    history: list[dict[str, Any]],
    environment: dict[str, Any],
    inputs: dict[str, Any],
    timings_s: dict[str, float],
    latency_runs: dict[str, int],
) -> dict[str, Any]:
    """Assembles report.json (DESIGN.md's keys first; accuracies are fractions in [0, 1])."""
    achieved = _achieved(baseline, pruned)
    options = config.method_options().model_dump(mode="json")
    return {
        "baseline": baseline.block(),
        "pruned": pruned.block(),
        "verification": {
            **pruned.verification.as_report(),
            "baseline": baseline.verification.as_report(),
        },
        "layers": result.layers or default_layers(result.model),
        "history": history,
        "method": {"name": config.method, "options": options, **result.report},
        "environment": environment,
        "inputs": inputs,
        "timings_s": timings_s,
        "config": config.model_dump(mode="json"),
        "target": {"requested": config.target.model_dump(exclude_none=True), "achieved": achieved},
        "schema_version": SCHEMA_VERSION,
        "units": UNITS,
        "latency_runs": latency_runs,
        "notes": _notes(achieved),
        "manifest": build_manifest(config=config, inputs=inputs, environment=environment, model=result.model),
    }
