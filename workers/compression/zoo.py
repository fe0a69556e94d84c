"""Built-in architectures for safetensors weights: CIFAR ResNets (option A), CIFAR VGG-BN, LeNet-5, MLP.

State-dict keys match the reference CIFAR checkpoints (`conv1`, `bn1`, `layer{1,2,3}.{i}.…`, `linear`),
so published safetensors weights load strictly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from workers.compression.errors import InvalidConfig

__all__ = ["DEFAULT_NORM", "build", "default_norm"]

Norm = tuple[tuple[float, ...], tuple[float, ...]]

# How the reference CIFAR weights were trained: x / 255, then this per-channel mean and std (RGB).
_RGB_NORM: Norm = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_RESNET_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}  # blocks/stage
_VGG_CFGS: dict[str, list[int | str]] = {  # conv widths; "M" is a 2x2 max pool
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}

DEFAULT_NORM: dict[str, Norm] = {name: _RGB_NORM for name in [*_RESNET_DEPTHS, *_VGG_CFGS]}


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by `stride` and zero-pad channels equally on both sides (no weights)."""

    def __init__(self, stride: int, pad: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (B, C_in, H, W) to (B, C_in + 2*pad, H/stride, W/stride)."""
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        changes = stride != 1 or c_in != c_out
        self.shortcut: nn.Module = PadShortcut(stride, (c_out - c_in) // 2) if changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2): 16/32/64-channel stages of n blocks, global average pool, linear classifier."""

    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        widths, c_in = (16, 32, 64), 16
        stages = []
        for i, width in enumerate(widths):
            blocks = [BasicBlock(c_in if j == 0 else width, width, 2 if i > 0 and j == 0 else 1)
                      for j in range(blocks_per_stage)]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps images (B, C, H, W) to logits (B, num_classes)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64, H/4, W/4)
        logits: torch.Tensor = self.linear(torch.flatten(self.pool(x), 1))
        return logits


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs: conv-BN-ReLU stacks and 5 max pools, then one linear layer."""

    def __init__(self, cfg: list[int | str], num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                width = int(item)
                layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                c_in = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # 1x1 already for 32x32 inputs; lets larger images work too
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps images (B, C, H, W) to logits (B, num_classes)."""
        logits: torch.Tensor = self.classifier(torch.flatten(self.pool(self.features(x)), 1))
        return logits


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max pooling: two 5x5 convs (6, 16 maps), then 120-84-classes dense layers."""

    def __init__(self, num_classes: int, in_channels: int, side: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)  # padding 2: 28x28 digits keep their size
        self.conv2 = nn.Conv2d(6, 16, 5)
        h, w = ((s // 2 - 4) // 2 for s in side)  # after conv1+pool and conv2 (valid)+pool
        self.fc1 = nn.Linear(16 * h * w, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps images (B, C, H, W) to logits (B, num_classes)."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = torch.flatten(F.max_pool2d(F.relu(self.conv2(x)), 2), 1)
        logits: torch.Tensor = self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))
        return logits


class MLP(nn.Module):
    """LeNet-300-100: a flattening multilayer perceptron with hidden layers of 300 and 100 units."""

    def __init__(self, num_classes: int, in_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps any (B, ...) input to logits (B, num_classes)."""
        logits: torch.Tensor = self.fc3(F.relu(self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))))
        return logits


def build(name: str, *, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Builds the named architecture for `num_classes` and one sample of `input_shape` (C, H, W) or (F,)."""
    if num_classes < 2:
        raise InvalidConfig(f"num_classes must be at least 2, got {num_classes}")
    if name == "mlp":
        return MLP(num_classes, math.prod(input_shape))
    if name not in _RESNET_DEPTHS and name not in _VGG_CFGS and name != "lenet5":
        known = sorted([*_RESNET_DEPTHS, *_VGG_CFGS, "lenet5", "mlp"])
        raise InvalidConfig(f"unknown architecture {name!r}; choose one of {known}")
    if len(input_shape) != 3:
        raise InvalidConfig(f"{name} takes images (C, H, W); the data has samples of shape {input_shape}")
    channels, side = input_shape[0], input_shape[1:]
    minimum = {"lenet5": 12}.get(name, 32 if name in _VGG_CFGS else 4)  # smallest side the pools allow
    if min(side) < minimum:
        raise InvalidConfig(f"{name} needs images of at least {minimum}x{minimum}; got {side[0]}x{side[1]}")
    if name in _RESNET_DEPTHS:
        return CifarResNet(_RESNET_DEPTHS[name], num_classes, channels)
    if name in _VGG_CFGS:
        return CifarVGG(_VGG_CFGS[name], num_classes, channels)
    return LeNet5(num_classes, channels, (side[0], side[1]))


def default_norm(name: str, input_shape: tuple[int, ...]) -> Norm | None:
    """Returns the architecture's training normalization when it fits the data's channels, else None."""
    norm = DEFAULT_NORM.get(name)
    if norm is None or len(input_shape) != 3 or input_shape[0] != len(norm[0]):
        return None
    return norm
