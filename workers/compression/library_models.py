"""Library architectures, built by the installed library's own code: torchvision, timm and transformers.

The weights are data from the upload; the code is the library's, so nothing the user wrote ever runs.
Nothing is downloaded: torchvision gets `weights=None`, timm `pretrained=False`, transformers builds from
the archive's config alone (never `trust_remote_code`) with the hub switched off.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workers.compression.architectures import ArchitectureRef
from workers.compression.errors import InvalidConfig, InvalidModel
from workers.compression.safetensors_file import listing

__all__ = ["HfLogits", "build", "classes_from_weights", "finish", "load_hf", "shapes_only"]

# transformers must never reach the hub: set before it is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# torchvision's aux classifiers are training-time heads off intermediate features: they are dropped after
# loading, so pruning and finetuning see the network that inference runs.
_TORCHVISION_AUX = ("aux1", "aux2", "AuxLogits")
# transformers model types that would load other code or weights (timm_wrapper pulls a timm hub config).
_HF_REFUSED = frozenset({"timm_wrapper"})


class HfLogits(nn.Module):
    """Wraps a transformers classifier so the engine sees a module mapping images to (B, classes) logits."""

    def __init__(self, model: nn.Module, *, interpolate_pos_encoding: bool) -> None:
        super().__init__()
        self.model = model
        self.interpolate = interpolate_pos_encoding  # fed at another size than its config's image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the model's logits for images x (B, C, H, W)."""
        extra = {"interpolate_pos_encoding": True} if self.interpolate else {}
        logits: torch.Tensor = self.model(pixel_values=x, **extra).logits
        return logits


def build(ref: ArchitectureRef, *, num_classes: int, image_size: int, device: str = "cpu") -> nn.Module:
    """Builds a torchvision or timm architecture with random weights for `num_classes` outputs, on `device`
    ("meta" builds shapes only, to check weights before memory is spent on them). Hugging Face
    checkpoints are built by `load_hf`, with their weights."""
    with _quiet(), torch.device(device):
        try:
            if ref.library == "torchvision":
                return _torchvision(ref.name, num_classes, image_size)
            if ref.library == "timm":
                return _timm(ref.name, num_classes, image_size)
            raise InvalidConfig(f"{ref} is not a torchvision or timm architecture")
        except (InvalidConfig, InvalidModel):
            raise
        except Exception as exc:  # the library's own code refusing the arguments or the config
            raise InvalidModel(f"{ref} could not be built: {type(exc).__name__}: {str(exc)[:300]}") from None


def shapes_only(ref: ArchitectureRef, *, num_classes: int, image_size: int) -> nn.Module:
    """Builds the architecture for its parameter names and shapes: on the meta device (no memory), or on
    the CPU for builders whose initialization reads tensor values (torchvision's RegNets copy them)."""
    try:
        return build(ref, num_classes=num_classes, image_size=image_size, device="meta")
    except InvalidModel:
        return build(ref, num_classes=num_classes, image_size=image_size)


def classes_from_weights(model: nn.Module, shapes: dict[str, tuple[int, ...]], built_classes: int) -> int:
    """Reads the class count from the weights: the axis where the built model has `built_classes` and the
    file differs (the classifier's rows), on the keys whose shapes disagree; `built_classes` if none do."""
    found: set[int] = set()
    for key, tensor in model.state_dict().items():
        stored, own = shapes.get(key), tuple(tensor.shape)
        if stored is None or stored == own or len(stored) != len(own):
            continue
        axes = [i for i, (a, b) in enumerate(zip(own, stored, strict=True)) if a != b]
        if all(own[i] == built_classes for i in axes):
            found.update(stored[i] for i in axes)
    if len(found) > 1:
        raise InvalidModel(f"the weights' classifier tensors disagree on the class count: {sorted(found)}")
    return found.pop() if found else built_classes


def finish(ref: ArchitectureRef, module: nn.Module, *, image_size: int) -> nn.Module:
    """Adapts a loaded library model for the engine: inference-only heads dropped, logits as a tensor."""
    if ref.library == "torchvision":
        for name in _TORCHVISION_AUX:
            if getattr(module, name, None) is not None:
                setattr(module, name, None)
        if hasattr(module, "aux_logits"):
            setattr(module, "aux_logits", False)  # noqa: B010  # a plain attribute, not a submodule
        return module
    if ref.library == "hf":
        config_size = getattr(getattr(module, "config", None), "image_size", image_size)
        accepts = "interpolate_pos_encoding" in inspect.signature(module.forward).parameters
        return HfLogits(module, interpolate_pos_encoding=accepts and config_size != image_size)
    return module


def _torchvision(name: str, num_classes: int, image_size: int) -> nn.Module:
    """Builds a torchvision classification builder; ViT/MaxViT get the image size they are fed."""
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):
        raise InvalidConfig(f"torchvision has no classification model {name!r}; see "
                            "torchvision.models.list_models(module=torchvision.models)")

    def make(**size: Any) -> nn.Module:
        """Calls the builder with random weights."""
        model: nn.Module = tvm.get_model(name, weights=None, num_classes=num_classes, **size)
        return model

    return _with_size(make, ({"image_size": image_size}, {"input_size": (image_size, image_size)}))


def _timm(name: str, num_classes: int, image_size: int) -> nn.Module:
    """Builds a timm model without pretrained weights; models with a fixed token grid get `img_size`."""
    import timm

    if not timm.is_model(name):
        raise InvalidConfig(f"timm has no model {name!r}; see timm.list_models()")

    def make(**size: Any) -> nn.Module:
        """Calls timm's factory without pretrained weights."""
        model: nn.Module = timm.create_model(name, pretrained=False, num_classes=num_classes, **size)
        return model

    return _with_size(make, ({"img_size": image_size},))


def _with_size(make: Callable[..., nn.Module], options: tuple[dict[str, Any], ...]) -> nn.Module:
    """Builds with the first image-size argument the builder accepts, else without one (CNNs take any)."""
    for size in options:
        try:
            return make(**size)
        except TypeError as exc:
            if "unexpected keyword" not in str(exc) and "got multiple values" not in str(exc):
                raise
    return make()


def load_hf(folder: Path, config: dict[str, Any]) -> nn.Module:
    """Loads a checkpoint folder (config.json + model.safetensors) with transformers' own loader, which
    knows each model type's checkpoint key layout; safetensors only, local files only, no remote code.
    Any missing, unexpected or mis-shaped weight is refused."""
    cls, hf_config = _hf_class(config)
    try:
        with _quiet():
            model, info = cls.from_pretrained(
                str(folder), config=hf_config, local_files_only=True, use_safetensors=True,
                trust_remote_code=False, output_loading_info=True, attn_implementation="eager",
                dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InvalidModel(f"transformers could not load the checkpoint: {str(exc)[:400]}") from None
    problems = {kind: info.get(kind) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    found = [f"{kind.replace('_', ' ')}: {listing([str(k) for k in keys])}"
             for kind, keys in problems.items() if keys]
    if found:
        raise InvalidModel(f"model.safetensors does not fit config.json's {hf_config.model_type!r} model — "
                           f"{'; '.join(found)}")
    loaded: nn.Module = model
    return loaded


def _hf_class(config: dict[str, Any]) -> tuple[Any, Any]:
    """Returns the transformers classifier class for config.json and its config object (never remote code)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    model_type = config.get("model_type")
    known = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    if not isinstance(model_type, str) or model_type not in known or model_type in _HF_REFUSED:
        supported = sorted(set(known) - _HF_REFUSED)
        raise InvalidModel(f"config.json's model_type {model_type!r} is not an image classifier that "
                           f"transformers implements natively; supported: {', '.join(supported)}")
    names = known[model_type]
    candidates = (names,) if isinstance(names, str) else tuple(names)
    declared = config.get("architectures")
    wanted = declared[0] if isinstance(declared, list) and declared else None
    cls = getattr(transformers, wanted if wanted in candidates else candidates[0])
    settings = {k: v for k, v in config.items() if k not in ("model_type", "torch_dtype", "dtype")}
    try:
        return cls, transformers.AutoConfig.for_model(model_type, **settings)
    except (TypeError, ValueError) as exc:
        raise InvalidModel(f"config.json is not a valid {model_type!r} config: {str(exc)[:300]}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences the libraries' warnings about random initialization: the upload's weights replace it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
