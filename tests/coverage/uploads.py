"""What a user uploads for a library model: its weights as safetensors, a save_pretrained archive, or an
ONNX export made with torch's exporter; and a tiny random dataset to run the chain on."""

from __future__ import annotations

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


def prepare(model: str, source: str, folder: Path, *, classes: int, size: int) -> tuple[Path, str | None]:
    """Builds `model` with random weights and saves it as `source` says; returns (file, architecture)."""
    library, _, name = model.partition("/")
    module = _hf_model(name, classes) if library == "hf" else _library_model(model, classes, size)
    _calibrate(module, size)
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


def _calibrate(module: nn.Module, size: int) -> None:
    """Gives the BatchNorms statistics of their inputs, as training leaves the model a user uploads: with
    the init's (mean 0, variance 1) a deep random net in eval mode (MobileOne's summed branches, Inception,
    EfficientNet) outputs 1e5-1e11-scale logits that no trained model has, so its finetuning diverges and
    float rounding alone breaks the ONNX parity."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    module.eval()  # dropout and stochastic depth off: statistics of the paths that eval mode runs
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration batches
        norm.train()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(4):
            module(torch.randn(8, 3, size, size, generator=generator))  # inputs as fed: standardized


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
