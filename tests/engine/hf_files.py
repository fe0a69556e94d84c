"""Hugging Face checkpoint archives for tests: a small real ViT saved the way save_pretrained lays it out."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

__all__ = ["tiny_vit", "write_archive"]


def tiny_vit(num_labels: int = 4, image_size: int = 32) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Returns (config.json contents, state dict) of a 2-layer ViT image classifier with random weights."""
    import transformers

    config = transformers.ViTConfig(image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64, num_labels=num_labels,
                                    architectures=["ViTForImageClassification"])
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config)
    return config.to_dict(), {k: v.contiguous() for k, v in model.state_dict().items()}


def write_archive(path: Path, files: dict[str, bytes | dict[str, Any] | dict[str, torch.Tensor]],
                  *, folder: str = "checkpoint") -> Path:
    """Writes a .zip or .tar (by suffix) of `files` inside `folder`/: dicts of tensors become safetensors,
    other dicts JSON."""
    encoded = {f"{folder}/{name}" if folder else name: _encode(value) for name, value in files.items()}
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in encoded.items():
                zf.writestr(name, data)
        return path
    with tarfile.open(path, "w") as tf:
        for name, data in encoded.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _encode(value: bytes | dict[str, Any] | dict[str, torch.Tensor]) -> bytes:
    """Serializes one archive member."""
    if isinstance(value, bytes):
        return value
    if value and all(isinstance(v, torch.Tensor) for v in value.values()):
        return save(value)
    return json.dumps(value).encode()
