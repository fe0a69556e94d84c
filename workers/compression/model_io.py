"""Model loading: ONNX (converted for training) or safetensors weights for a zoo architecture, nothing else.

The format is decided by content (`sniff`); every format that can run code when loaded is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from workers.compression import onnx_import, safetensors_file, zoo
from workers.compression.config import ARCHITECTURES
from workers.compression.errors import InvalidConfig, InvalidModel
from workers.compression.safetensors_file import ALLOWED_DTYPES, TensorTable, listing
from workers.compression.sniff import sniff_model_file

__all__ = ["ALLOWED_DTYPES", "LoadedModel", "check_safetensors", "load_model"]

Norm = tuple[tuple[float, ...], tuple[float, ...]]



@dataclass
class LoadedModel:
    """A model ready to evaluate and train: eval mode, float32, CPU."""

    module: nn.Module
    format: Literal["onnx", "safetensors"]
    default_norm: Norm | None  # the zoo architecture's training normalization; None for ONNX
    input_shape: tuple[int, ...]  # one sample, e.g. (3, 32, 32)
    num_classes: int  # outputs of the classifier; at least the dataset's class count


def load_model(
    path: Path, *, architecture: str | None, input_shape: tuple[int, ...], num_classes: int,
) -> LoadedModel:
    """Loads an uploaded model for samples of `input_shape` and labels below `num_classes`."""
    kind = sniff_model_file(path)
    if kind == "onnx":
        return _load_onnx(path, input_shape, num_classes)
    if architecture is None:
        raise InvalidConfig(f"safetensors files hold weights only; set `architecture` to the network they "
                            f"belong to, one of {list(ARCHITECTURES)}")
    return _load_safetensors(path, architecture, input_shape, num_classes)


def _load_onnx(path: Path, input_shape: tuple[int, ...], num_classes: int) -> LoadedModel:
    """Validates and converts an ONNX file whose input and output fit the dataset."""
    model = onnx_import.read_onnx(path)
    classes = onnx_import.check_fits(model, input_shape, num_classes)
    module = onnx_import.to_torch(model, input_shape)
    with torch.no_grad():
        outputs = int(module(torch.zeros(1, *input_shape)).shape[1]) if classes is None else classes
    onnx_import.check_classes(outputs, num_classes)
    return LoadedModel(module, "onnx", None, input_shape, outputs)


def check_safetensors(
    path: Path, *, architecture: str, input_shape: tuple[int, ...], num_classes: int,
) -> int:
    """Checks that weights fit the architecture from the header alone (no tensor read); returns classes."""
    return _classes(_fitted_module(path, architecture, input_shape, num_classes)[0])


def _fitted_module(path: Path, architecture: str, input_shape: tuple[int, ...], num_classes: int,
                   ) -> tuple[nn.Module, TensorTable]:
    """Builds the architecture for the file's class count after checking its header's keys and shapes."""
    table = safetensors_file.read_header(path)
    module = _zoo_module(architecture, table.shapes, input_shape, num_classes)
    _check_keys(module, table.shapes, architecture, table.metadata.get("architecture"))
    return module, table


def _load_safetensors(
    path: Path, architecture: str, input_shape: tuple[int, ...], num_classes: int,
) -> LoadedModel:
    """Reads weights with the official reader and loads them strictly into the zoo architecture."""
    module, table = _fitted_module(path, architecture, input_shape, num_classes)
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {key: f.get_tensor(key) for key in table.shapes}
    except SafetensorError as exc:
        raise InvalidModel(f"the safetensors file is truncated or malformed: {exc}") from None
    state = {k: v if k.endswith("num_batches_tracked") else v.float() for k, v in state.items()}
    module.load_state_dict(state, strict=True)
    module.float().eval()
    norm = zoo.default_norm(architecture, input_shape)
    return LoadedModel(module, "safetensors", norm, input_shape, _classes(module))


def _classes(module: nn.Module) -> int:
    """Returns the output count of a zoo network (its last Linear layer)."""
    return int(next(m for m in reversed(list(module.modules())) if isinstance(m, nn.Linear)).out_features)


def _zoo_module(architecture: str, shapes: dict[str, tuple[int, ...]], input_shape: tuple[int, ...],
                num_classes: int) -> nn.Module:
    """Builds the architecture with the weights' own class count (which must cover the dataset's labels)."""
    module = zoo.build(architecture, num_classes=num_classes, input_shape=input_shape)
    head = next(name for name, m in reversed(list(module.named_modules())) if isinstance(m, nn.Linear))
    stored = shapes.get(f"{head}.weight", ())
    if len(stored) == 2 and stored[0] != num_classes:
        onnx_import.check_classes(stored[0], num_classes)
        module = zoo.build(architecture, num_classes=stored[0], input_shape=input_shape)
    return module


def _check_keys(module: nn.Module, shapes: dict[str, tuple[int, ...]], architecture: str,
                stored_architecture: str | None) -> None:
    """Requires the file's keys and shapes to equal the architecture's (num_batches_tracked may be absent)."""
    expected = {key: tuple(t.shape) for key, t in module.state_dict().items()}
    missing = [k for k in expected if k not in shapes and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [f"{k}: file {shapes[k]} vs {architecture} {expected[k]}"
             for k in expected if k in shapes and shapes[k] != expected[k]]
    if not (missing or unexpected or wrong):
        return
    groups = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong))
    problems = [f"{label}: {listing(keys)}" for label, keys in groups if keys]
    hint = ""
    if stored_architecture and stored_architecture != architecture:
        hint = f" The file's metadata says it is a {stored_architecture!r}."
    raise InvalidModel(f"the weights do not fit architecture {architecture!r} — {'; '.join(problems)}.{hint}")
