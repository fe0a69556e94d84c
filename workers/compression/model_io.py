"""Model loading: ONNX (converted for training), or safetensors weights for a zoo or library architecture
(torchvision, timm, a Hugging Face checkpoint archive), nothing else.

The format is decided by content (`sniff`); every format that can run code when loaded is refused.
Weights are checked against the architecture's keys and shapes on the meta device before any memory is
spent on them, then loaded strictly.
"""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from workers.compression import hf_archive, library_models, onnx_import, safetensors_file, zoo
from workers.compression.architectures import ArchitectureRef, check_model_format, parse_architecture
from workers.compression.cost import CostLimits, check_cost
from workers.compression.errors import InvalidModel
from workers.compression.onnx_cost import estimate_onnx_cost
from workers.compression.preprocessing import Preprocessing, for_architecture, for_onnx
from workers.compression.safetensors_file import ALLOWED_DTYPES, TensorTable, listing
from workers.compression.sniff import sniff_model_file

__all__ = ["ALLOWED_DTYPES", "LoadedModel", "check_safetensors", "load_model", "model_preprocessing"]

Norm = tuple[tuple[float, ...], tuple[float, ...]]



@dataclass
class LoadedModel:
    """A model ready to evaluate and train: eval mode, float32, CPU."""

    module: nn.Module
    format: Literal["onnx", "safetensors", "hf"]
    default_norm: Norm | None  # the zoo architecture's training normalization; None for ONNX
    input_shape: tuple[int, ...]  # one sample, e.g. (3, 32, 32)
    num_classes: int  # outputs of the classifier; at least the dataset's class count


def load_model(
    path: Path, *, architecture: str | None, input_shape: tuple[int, ...], num_classes: int,
) -> LoadedModel:
    """Loads an uploaded model for samples of `input_shape` and labels below `num_classes`."""
    kind = sniff_model_file(path)
    check_model_format(kind, architecture)
    if kind == "onnx":
        loaded = _load_onnx(path, input_shape, num_classes)
    else:
        assert architecture is not None  # check_model_format refused weights without one
        ref = parse_architecture(architecture)
        if ref.library == "zoo":
            loaded = _load_safetensors(path, architecture, input_shape, num_classes)
        elif ref.library != "hf":
            loaded = _load_library(path, ref, input_shape, num_classes)
        else:
            loaded = _load_hf(path, ref, input_shape, num_classes)
    _check_finite(loaded.module)
    return loaded


def _check_finite(module: nn.Module) -> None:
    """Refuses weights or buffers holding NaN or infinity: they would train to NaN and fail much later."""
    bad = [name for name, t in module.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise InvalidModel(f"the model's weights hold NaN or infinite values ({listing(bad)}); they must be "
                           "finite numbers")


def _load_hf(path: Path, ref: ArchitectureRef, input_shape: tuple[int, ...], num_classes: int) -> LoadedModel:
    """Loads a checkpoint archive: its weights streamed out (bounded) beside the checked config, then
    transformers' own loader (it maps each model type's checkpoint key layout), strictly."""
    checkpoint = hf_archive.scan(path)
    with tempfile.TemporaryDirectory(prefix="secateur-hf-") as tmp:
        weights = hf_archive.extract_weights(path, checkpoint, Path(tmp) / hf_archive.WEIGHTS)
        safetensors_file.read_header(weights)  # the official reader's checks, before transformers reads it
        module = library_models.load_hf(Path(tmp), checkpoint.config)
    classes = int(module.config.num_labels)  # type: ignore[union-attr,arg-type]  # transformers checked the rows
    onnx_import.check_classes(classes, num_classes)
    module = library_models.finish(ref, module, image_size=input_shape[-1]).float().eval()
    return LoadedModel(module, "hf", None, input_shape, classes)


def model_preprocessing(path: Path, architecture: str | None) -> Preprocessing:
    """Returns how the model expects to be fed (its library's, archive's or ONNX input's defaults)."""
    kind = sniff_model_file(path)
    check_model_format(kind, architecture)
    if kind == "onnx":
        return for_onnx(onnx_import.signature(onnx_import.read_onnx(path))[0])
    assert architecture is not None  # check_model_format refused weights without one
    ref = parse_architecture(architecture)
    if ref.library == "hf":
        checkpoint = hf_archive.scan(path)
        return for_architecture(ref, hf_preprocessor=checkpoint.preprocessor, hf_config=checkpoint.config)
    return for_architecture(ref, zoo_norm=zoo.DEFAULT_NORM.get(ref.name))


def _load_library(weights: Path, ref: ArchitectureRef, input_shape: tuple[int, ...], num_classes: int,
                  ) -> LoadedModel:
    """Builds a library architecture for the weights' class count, checks keys and shapes on the meta
    device, then builds it for real and loads the weights strictly."""
    if len(input_shape) != 3:
        raise InvalidModel(f"{ref} takes images (C, H, W); the data has samples of shape {input_shape}")
    size = input_shape[-1]
    table = safetensors_file.read_header(weights)
    shape = library_models.shapes_only(ref, num_classes=num_classes, image_size=size)
    classes = library_models.classes_from_weights(shape, table.shapes, num_classes)
    onnx_import.check_classes(classes, num_classes)
    if classes != num_classes:
        shape = library_models.shapes_only(ref, num_classes=classes, image_size=size)
    _check_keys(shape, table.shapes, str(ref), table.metadata.get("architecture"))
    module = library_models.build(ref, num_classes=classes, image_size=size)
    _load_state(module, weights, table)
    module = library_models.finish(ref, module, image_size=size).float().eval()
    return LoadedModel(module, "safetensors", None, input_shape, classes)


def _load_onnx(path: Path, input_shape: tuple[int, ...], num_classes: int) -> LoadedModel:
    """Validates and converts an ONNX file whose input and output fit the dataset and whose estimated cost
    is within the engine's limits (the service may hold it to lower ones at submit)."""
    model = onnx_import.read_onnx(path)
    classes = onnx_import.check_fits(model, input_shape, num_classes)
    check_cost(estimate_onnx_cost(model, input_shape), CostLimits())
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
    _load_state(module, path, table)
    module.float().eval()
    norm = zoo.default_norm(architecture, input_shape)
    return LoadedModel(module, "safetensors", norm, input_shape, _classes(module))


def _load_state(module: nn.Module, path: Path, table: TensorTable) -> None:
    """Reads every tensor with the official reader and loads them strictly (floats as float32; integer
    buffers such as BatchNorm's step counter or a relative-position index keep their type)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {key: f.get_tensor(key) for key in table.shapes}
    except SafetensorError as exc:
        raise InvalidModel(f"the safetensors file is truncated or malformed: {exc}") from None
    own = module.state_dict()
    wrong = [f"{k} ({table.dtypes[k]})" for k, v in state.items()
             if v.is_floating_point() != own[k].is_floating_point()]
    if wrong:
        raise InvalidModel(f"unsupported tensor dtypes: {listing(wrong)}; weights must be float32, float16 "
                           "or bfloat16 (integers only where the architecture keeps an integer buffer)")
    loaded = OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in state.items())
    # A state dict carries each module's format version (torchvision's MNASNet refuses to load without
    # it); a weights file cannot, and the weights were saved from this same code, so its versions apply.
    loaded._metadata = getattr(own, "_metadata", None)  # type: ignore[attr-defined]
    for key, value in own.items():  # with versions given, BatchNorm no longer fills a missing step counter
        if key.endswith("num_batches_tracked") and key not in loaded:
            loaded[key] = value
    module.load_state_dict(loaded, strict=True)


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
    elif wrong and not (missing or unexpected):
        hint = (" Only shapes differ: if these are position embeddings, the weights were made for another "
                "input size — set data.image_size to it.")
    raise InvalidModel(f"the weights do not fit architecture {architecture!r} — {'; '.join(problems)}.{hint}")
