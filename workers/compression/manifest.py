"""The report's `manifest`: everything a run's result depends on, so it can be rerun and checked.

Input hashes, the fully resolved config (every schema default filled in, the method's options too), the
seeds, library versions, the device and its determinism settings, and digests of the outcome: which
weights were kept (`kept_sha256`: shapes and the nonzero pattern of every Conv/Linear weight, so it
covers both removed channels and unstructured masks) and the exact final weights (`weights_sha256`).
A rerun compares these with its original (workers/rerun.py). On CPU a rerun is bit-identical: same
inputs, config, seeds, thread count and libraries give the same masks, weights and accuracies.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from torch import nn

from workers.compression.config import JobConfig
from workers.compression.methods.masks import weight_layers

__all__ = ["MANIFEST_VERSION", "build_manifest", "determinism", "outcome_digests", "resolved_config"]

MANIFEST_VERSION = 1
_INPUT_FACTS = ("model_sha256", "model_bytes", "model_format", "dataset_sha256", "dataset_bytes",
                "architecture")


def resolved_config(config: JobConfig) -> dict[str, Any]:
    """The config with every default filled in, the method's options included (a valid config itself).

    `data` fields left null stay null: they mean "from the model and the data", both fixed by their hashes.
    """
    resolved = config.model_dump(mode="json")
    resolved["options"] = config.method_options().model_dump(mode="json")
    return resolved


def determinism(device: torch.device) -> dict[str, Any]:
    """The settings that decide whether a rerun can be bit-identical on this device."""
    return {
        "bit_identical_expected": device.type == "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor in memory order, whatever its dtype (viewed as uint8)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def outcome_digests(model: nn.Module) -> dict[str, str]:
    """SHA-256 of what was kept (each Conv/Linear weight's name, shape and nonzero pattern) and of every
    final weight and buffer, bit for bit."""
    kept, weights = hashlib.sha256(), hashlib.sha256()
    for name, _, weight in weight_layers(model):
        kept.update(f"{name}:{tuple(weight.shape)};".encode())
        kept.update(_tensor_bytes(weight != 0))
    for name, tensor in model.state_dict().items():
        weights.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        weights.update(_tensor_bytes(tensor))
    return {"kept_sha256": kept.hexdigest(), "weights_sha256": weights.hexdigest()}


def build_manifest(*, config: JobConfig, inputs: dict[str, Any], environment: dict[str, Any],
                   model: nn.Module) -> dict[str, Any]:
    """Assembles the manifest of one finished compression (`model` is the final pruned model)."""
    device = torch.device(str(environment.get("device", "cpu")))
    return {
        "version": MANIFEST_VERSION,
        "inputs": {key: inputs.get(key) for key in _INPUT_FACTS},
        "config": resolved_config(config),
        "seeds": {"python_numpy_torch": config.seed, "data_split": config.seed, "training": config.seed},
        "libraries": {k: v for k, v in environment.items()
                      if k in ("python", "torch", "onnx", "onnxruntime", "torch_pruning", "numpy")},
        "device": {"type": device.type, "name": environment.get("device_name"),
                   "platform": environment.get("platform")},
        "determinism": determinism(device),
        "outcome": outcome_digests(model),
    }
