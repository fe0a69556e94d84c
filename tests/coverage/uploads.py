"""What a user uploads for a library model: its weights as safetensors, a save_pretrained archive, or an
ONNX export made with torch's exporter; and a tiny random dataset to run the chain on."""

from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

__all__ = ["prepare", "tiny_dataset"]


def tiny_dataset(path: Path, *, classes: int, size: int, per_class: int = 4) -> Path:
    """Writes an .npz of random images (`per_class` train and half as many val images per class)."""
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns n images and balanced labels."""
        return rng.integers(0, 256, (n * classes, 3, size, size), dtype=np.uint8), np.repeat(
            np.arange(classes), n
        )

    (x_train, y_train), (x_val, y_val) = split(per_class), split(max(1, per_class // 2))
    np.savez(path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    return path


def prepare(model: str, source: str, folder: Path, *, dataset: Path, classes: int,
            size: int) -> tuple[Path, str | None]:
    """Builds `model` with random weights, calibrated on `dataset`'s training images, and saves it as
    `source` says; returns (file, architecture)."""
    library, _, name = model.partition("/")
    module = _hf_model(name, classes) if library == "hf" else _library_model(model, classes, size)
    _calibrate(module, _fed_images(model, source, module, dataset, size))
    if source == "onnx":
        return _export(module, size, folder / "model.onnx"), None
    if library == "hf":
        return _archive(module, folder), "hf"
    path = folder / "model.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}, str(path))
    return path, model


def _library_model(model: str, classes: int, size: int) -> nn.Module:
    """Builds a torchvision or timm model the way a user does (random init, the input size it is fed)."""
    from workers.compression.architectures import parse_architecture
    from workers.compression.library_models import build

    return build(parse_architecture(model), num_classes=classes, image_size=size)


def _hf_model(model_type: str, classes: int) -> nn.Module:
    """Builds a small transformers image classifier of `model_type` from its config, as its model card's
    class would (config.architectures names it, as in every saved checkpoint)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    from tests.coverage.harness import HF_MODELS

    names = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[model_type]
    name = names if isinstance(names, str) else names[0]
    config = transformers.AutoConfig.for_model(model_type, **HF_MODELS[model_type], num_labels=classes,
                                               architectures=[name])
    model: nn.Module = getattr(transformers, name)(config)
    return model


def _archive(module: nn.Module, folder: Path) -> Path:
    """Saves with save_pretrained (safetensors) and zips config.json + model.safetensors."""
    saved = folder / "pretrained"
    module.save_pretrained(saved, safe_serialization=True)  # type: ignore[operator]
    path = folder / "model.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("config.json", "model.safetensors"):
            zf.write(saved / name, f"checkpoint/{name}")
    return path


class _Logits(nn.Module):
    """What a user exports for a transformers model: images in, logits out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the logits."""
        logits: torch.Tensor = self.model(pixel_values=x).logits
        return logits


def _fed_images(model: str, source: str, module: nn.Module, dataset: Path, size: int) -> torch.Tensor:
    """The training images as the job will feed them: the engine's own loading, with the preprocessing it
    resolves for this upload (the library's defaults; for ONNX, the data's own statistics)."""
    from workers.compression.architectures import parse_architecture
    from workers.compression.config import DataOptions
    from workers.compression.datasets import load_dataset
    from workers.compression.preprocessing import Preprocessing, for_architecture, for_onnx

    if source == "onnx":
        preprocessing: Preprocessing = for_onnx((3, size, size))
    else:
        ref = parse_architecture("hf" if model.startswith("hf/") else model)
        config = getattr(module, "config", None)
        preprocessing = for_architecture(ref, hf_config=config.to_dict() if config is not None else None)
    options = DataOptions(image_size=size)
    data = load_dataset(dataset, options, preprocessing=preprocessing.overridden(options))
    images, _ = next(data.batches("train", data.train_samples, shuffle=False))
    return images


def _calibrate(module: nn.Module, images: torch.Tensor) -> None:
    """Gives the BatchNorms statistics of the images the job feeds, as training on such data leaves the
    model a user uploads. With the init's (mean 0, variance 1) a deep random net in eval mode (MobileOne's
    summed branches, Inception, EfficientNet) outputs 1e5-1e11-scale logits that no trained model has, so
    its finetuning diverges and float rounding alone breaks the ONNX parity; and calibrated on other inputs
    (standardized noise), random EfficientNet-B5's squeeze-excite gates still blew logits up to 1e6 on the
    job's images. One norm at a time, in order, every other norm in eval mode: each is calibrated on exactly
    what eval mode feeds it."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    module.eval()  # dropout and stochastic depth off: statistics of the paths that eval mode runs
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # the batch's own statistics
        norm.train()
        stop = norm.register_forward_hook(_stop_after)
        with torch.no_grad(), contextlib.suppress(_Calibrated):
            module(images)
        stop.remove()
        norm.eval()


class _Calibrated(Exception):
    """Ends a calibration forward pass at the norm just calibrated (nothing after it is needed)."""


def _stop_after(module: nn.Module, inputs: object, output: object) -> None:
    """Forward hook: stops the pass once the norm has seen its input."""
    raise _Calibrated


def _export(module: nn.Module, size: int, path: Path) -> Path:
    """Exports like the docs show: legacy exporter, opset 17, a dynamic batch axis."""
    if hasattr(module, "config"):
        module = _Logits(module)
    module.eval()
    torch.onnx.export(
        module,
        (torch.zeros(1, 3, size, size),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path
