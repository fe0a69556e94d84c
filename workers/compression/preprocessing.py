"""How a model is fed: image size, resize + center crop, interpolation, mean/std (the model's, or the job's).

Defaults come from where the architecture's library keeps them (timm's pretrained config, torchvision's
weight transforms, a Hugging Face `preprocessor_config.json`, the zoo's CIFAR convention, a fixed ONNX
input size); every field can be overridden in the job's `data` options. The resolved record goes into the
report and into the exported ONNX's metadata, so a downloaded model says how to feed it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeGuard

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from workers.compression.architectures import ArchitectureRef
from workers.compression.config import DataOptions, Interpolation

__all__ = ["IMAGENET_NORM", "Preprocessing", "for_architecture", "for_onnx", "resize_center_crop"]

Norm = tuple[tuple[float, ...], tuple[float, ...]]

IMAGENET_NORM: Norm = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_IMAGENET_SIZE, _IMAGENET_CROP = 224, 0.875  # the ImageNet evaluation convention: resize 256, crop 224
_PIL_RESAMPLE: dict[int, Interpolation] = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_RESIZE_CHUNK = 256  # images resized at once: bounds the float copy that resizing makes


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing a model expects; None fields mean "from the data" (its size, its statistics)."""

    image_size: int | None  # square side fed to the model; None keeps the data's own size
    crop_pct: float  # eval transform: resize the short side to image_size / crop_pct, then center crop
    interpolation: Interpolation
    mean: tuple[float, ...] | None  # per channel, applied after scaling to [0, 1]
    std: tuple[float, ...] | None
    channels: int | None  # channels the model takes (grayscale data is repeated to fit); None: the data's
    source: str  # where the defaults came from, for the report

    def overridden(self, options: DataOptions) -> Preprocessing:
        """Returns these defaults with the job's `data` options applied on top."""
        changes: dict[str, Any] = {}
        if options.image_size is not None:
            changes["image_size"] = options.image_size
        if options.crop_pct is not None:
            changes["crop_pct"] = options.crop_pct
        if options.interpolation is not None:
            changes["interpolation"] = options.interpolation
        if options.mean is not None and options.std is not None:
            changes["mean"], changes["std"] = tuple(options.mean), tuple(options.std)
        return replace(self, **changes)

    @property
    def norm(self) -> Norm | None:
        """Returns (mean, std) when the preprocessing fixes them, else None (computed from the data)."""
        return None if self.mean is None or self.std is None else (self.mean, self.std)

    def as_dict(self) -> dict[str, Any]:
        """Returns the record as JSON-ready values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _plain(source: str, norm: Norm | None = None) -> Preprocessing:
    """Returns preprocessing that keeps the data's size, with `norm` if the network was trained with one."""
    mean, std = norm if norm is not None else (None, None)
    return Preprocessing(None, 1.0, "bilinear", mean, std, None, source)


def for_onnx(input_shape: tuple[int | None, ...]) -> Preprocessing:
    """An ONNX graph with a fixed square image input is fed at that size; otherwise at the data's size."""
    if len(input_shape) == 3 and input_shape[1] is not None and input_shape[1] == input_shape[2]:
        size = input_shape[1]
        return Preprocessing(size, 1.0, "bilinear", None, None, input_shape[0], "the ONNX input's fixed size")
    return _plain("the data (the ONNX input size is not fixed)")


def for_architecture(ref: ArchitectureRef, *, zoo_norm: Norm | None = None,
                     hf_preprocessor: dict[str, Any] | None = None,
                     hf_config: dict[str, Any] | None = None) -> Preprocessing:
    """Returns the architecture's own preprocessing defaults (never downloads anything)."""
    if ref.library == "zoo":
        return _plain(f"the {ref.name} zoo network (CIFAR convention)", zoo_norm)
    if ref.library == "timm":
        return _timm(ref.name)
    if ref.library == "torchvision":
        return _torchvision(ref.name)
    return _hf(hf_preprocessor or {}, hf_config or {})


def _timm(name: str) -> Preprocessing:
    """Reads timm's default pretrained config for the model (input size, crop, interpolation, mean/std)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return Preprocessing(_IMAGENET_SIZE, _IMAGENET_CROP, "bicubic", *IMAGENET_NORM, 3,
                             f"ImageNet defaults (timm has no pretrained config for {name})")
    interpolation = cfg.interpolation if cfg.interpolation in _PIL_RESAMPLE.values() else "bicubic"
    return Preprocessing(int(cfg.input_size[-1]), float(cfg.crop_pct), interpolation,  # type: ignore[arg-type]
                         tuple(cfg.mean), tuple(cfg.std), int(cfg.input_size[0]), f"timm's config for {name}")


def _torchvision(name: str) -> Preprocessing:
    """Reads the evaluation transform of the builder's default weights (their metadata, not the weights)."""
    from torchvision.models import get_model_weights

    try:
        transform = get_model_weights(name).DEFAULT.transforms()  # type: ignore[attr-defined]
    except (ValueError, AttributeError):
        return Preprocessing(_IMAGENET_SIZE, _IMAGENET_CROP, "bilinear", *IMAGENET_NORM, 3,
                             f"ImageNet defaults (torchvision lists no weights for {name})")
    crop, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
    return Preprocessing(crop, crop / resize, transform.interpolation.value, tuple(transform.mean),
                         tuple(transform.std), 3, f"torchvision's default weights for {name}")


def _hf(preprocessor: dict[str, Any], config: dict[str, Any]) -> Preprocessing:
    """Reads a Hugging Face image processor's JSON (size, crop, resample, mean/std); config.json fills in."""
    size = _hf_size(preprocessor.get("crop_size")) if preprocessor.get("do_center_crop") else None
    resize = _hf_size(preprocessor.get("size"))
    image_size = size or resize or _positive_int(config.get("image_size")) or _IMAGENET_SIZE
    crop_pct = _unit(preprocessor.get("crop_pct")) or (image_size / resize if size and resize else 1.0)
    mean, std = preprocessor.get("image_mean"), preprocessor.get("image_std")
    norm = (tuple(map(float, mean)), tuple(map(float, std))) if _floats(mean) and _floats(std) else None
    resample = preprocessor.get("resample")
    interpolation = _PIL_RESAMPLE.get(resample, "bilinear") if isinstance(resample, int) else "bilinear"
    channels = _positive_int(config.get("num_channels")) or 3
    source = "the archive's preprocessor_config.json" if preprocessor else "the archive's config.json"
    return Preprocessing(image_size, min(crop_pct, 1.0), interpolation, *(norm or IMAGENET_NORM), channels,
                         source)


def _hf_size(value: Any) -> int | None:
    """Reads an image processor's size: an int, {"height", "width"} (square side) or {"shortest_edge"}."""
    if isinstance(value, dict):
        value = value.get("height", value.get("shortest_edge"))
    return _positive_int(value)


def _positive_int(value: Any) -> int | None:
    """Returns `value` if it is a sane positive image side, else None (untrusted JSON)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 4096 else None


def _unit(value: Any) -> float | None:
    """Returns `value` if it is a fraction in (0, 1], else None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1
    return float(value) if ok else None


def _floats(value: Any) -> TypeGuard[list[float]]:
    """Tells whether `value` is a short list of finite numbers (one per channel)."""
    return (isinstance(value, list) and 0 < len(value) <= 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value))


def resize_center_crop(x: torch.Tensor, size: int, crop_pct: float, interpolation: Interpolation,
                       ) -> torch.Tensor:
    """Resizes images (N, C, H, W) so the short side is size / crop_pct, then crops the center size×size.

    torchvision's own functional transforms, in chunks; uint8 stays uint8 (antialiased like PIL).
    """
    short = max(size, round(size / crop_pct))
    mode = InterpolationMode(interpolation)
    chunks = [TF.center_crop(TF.resize(chunk, short, interpolation=mode, antialias=True), [size, size])
              for chunk in torch.split(x, _RESIZE_CHUNK)]
    return torch.cat(chunks) if chunks else x.new_empty((0, x.shape[1], size, size))
