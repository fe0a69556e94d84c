"""Architecture names a job may give: a CIFAR zoo network, `torchvision/<builder>`, `timm/<model>`, or `hf`.

Parsing is pure (no torch), so the service validates names at submit; whether a library really has the
builder is checked where the library is installed (the worker), with the same error type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from workers.compression.errors import InvalidConfig

__all__ = ["LIBRARIES", "ZOO", "ArchitectureRef", "check_model_format", "parse_architecture"]

Library = Literal["zoo", "torchvision", "timm", "hf"]

ZOO: tuple[str, ...] = (
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "vgg11", "vgg13", "vgg16", "vgg19",
    "lenet5", "mlp",
)
LIBRARIES = ("torchvision", "timm")
# Builder names of torchvision (`resnet50`) and timm (`vit_tiny_patch16_224`, `convnextv2_atto`): no dots
# (a timm pretrained tag such as `.augreg_in21k` names downloadable weights, which we never fetch).
_BUILDER = re.compile(r"[a-z][a-z0-9_]{0,99}")


@dataclass(frozen=True)
class ArchitectureRef:
    """A parsed architecture: which library builds it and the builder's name ("" for `hf`)."""

    library: Library
    name: str

    def __str__(self) -> str:
        """Returns the name as a job config spells it."""
        if self.library == "zoo":
            return self.name
        return "hf" if self.library == "hf" else f"{self.library}/{self.name}"


def parse_architecture(text: str) -> ArchitectureRef:
    """Parses a config's `architecture`; raises ValueError with the accepted forms."""
    if text in ZOO:
        return ArchitectureRef("zoo", text)
    if text == "hf":
        return ArchitectureRef("hf", "")
    library, _, name = text.partition("/")
    if library in LIBRARIES and _BUILDER.fullmatch(name):
        return ArchitectureRef(library, name)  # type: ignore[arg-type]  # checked against LIBRARIES
    raise ValueError(
        f"unknown architecture {text!r}: use a zoo network ({', '.join(ZOO)}), 'torchvision/<builder>' "
        "(e.g. torchvision/resnet50), 'timm/<model>' (e.g. timm/efficientnet_b0, no pretrained tag), or "
        "'hf' with a Hugging Face checkpoint archive")


def check_model_format(model_format: str, architecture: str | None) -> None:
    """Refuses a model file that does not suit the config: weights need an architecture, and a checkpoint
    archive goes with `hf` only."""
    if model_format == "safetensors" and (architecture is None or architecture == "hf"):
        raise InvalidConfig(f"safetensors weights need `architecture` in the config: a zoo network "
                            f"({', '.join(ZOO)}), \"torchvision/<builder>\" or \"timm/<model>\"; or upload "
                            "the model as ONNX")
    if model_format == "hf" and architecture != "hf":
        raise InvalidConfig("a ZIP or tar model is read as a Hugging Face checkpoint archive (config.json + "
                            "model.safetensors): set `architecture` to \"hf\"")
    if architecture == "hf" and model_format != "hf":
        raise InvalidConfig(f"architecture \"hf\" takes a .zip or .tar of config.json + model.safetensors "
                            f"(+ preprocessor_config.json); the model file is {model_format}")
