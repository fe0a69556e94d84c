"""Zoo: every architecture builds, runs, has the reference keys and parameter counts, and exports to ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from workers.compression import zoo
from workers.compression.config import ARCHITECTURES
from workers.compression.errors import InvalidConfig


def _shape(name: str) -> tuple[int, ...]:
    """Returns a small input shape each architecture accepts."""
    return {"lenet5": (1, 28, 28), "mlp": (20,)}.get(name, (3, 32, 32))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_builds_and_maps_to_logits(name: str) -> None:
    """Each config-listed architecture builds and maps a batch of 2 to (2, num_classes) logits."""
    model = zoo.build(name, num_classes=7, input_shape=_shape(name)).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, *_shape(name)))
    assert out.shape == (2, 7)


@pytest.mark.parametrize(("name", "params"), [("resnet20", 269_722), ("resnet56", 853_018),
                                               ("resnet110", 1_727_962)])
def test_resnet_parameter_counts_match_the_paper(name: str, params: int) -> None:
    """ResNet-20/56/110 have the parameter counts of He et al. (0.27M, 0.85M, 1.7M) with a 10-way head."""
    model = zoo.build(name, num_classes=10, input_shape=(3, 32, 32))
    assert sum(p.numel() for p in model.parameters()) == params


def test_resnet20_state_dict_keys_follow_the_reference() -> None:
    """Keys are conv1/bn1, layerS.B.{conv1,bn1,conv2,bn2}, linear; shortcuts carry no weights."""
    keys = set(zoo.build("resnet20", num_classes=10, input_shape=(3, 32, 32)).state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer3.2.conv2.weight", "layer2.0.bn1.num_batches_tracked",
            "linear.weight", "linear.bias"} <= keys
    assert not [k for k in keys if "shortcut" in k]
    assert len(keys) == 1 + 5 + 9 * 2 * (1 + 5) + 2


def test_option_a_shortcut_subsamples_and_pads_channels() -> None:
    """The shortcut takes every second pixel and puts zero channels on both sides of the input's."""
    block = zoo.BasicBlock(16, 32, 2)
    x = torch.randn(1, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (1, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0
    assert out[:, 24:].abs().sum() == 0
    assert isinstance(zoo.BasicBlock(16, 16, 1).shortcut, nn.Identity)


def test_vgg16_has_thirteen_convs_and_one_linear() -> None:
    """VGG-16-BN for CIFAR: 13 conv layers each followed by BN, one 512-to-classes linear layer."""
    model = zoo.build("vgg16", num_classes=10, input_shape=(3, 32, 32))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 10)]


def test_resnet_exports_to_onnx_with_the_shortcut_module(tmp_path: Path) -> None:
    """The option-A shortcut is a module that the legacy ONNX exporter traces."""
    model = zoo.build("resnet20", num_classes=10, input_shape=(3, 32, 32)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17)
    assert path.stat().st_size > 1_000_000  # ~0.27M float32 parameters


@pytest.mark.parametrize(
    ("name", "shape", "needle"),
    [("resnet999", (3, 32, 32), "unknown architecture"), ("vgg11", (3, 16, 16), "at least 32"),
     ("resnet20", (20,), "images"), ("lenet5", (1, 8, 8), "at least 12")],
)
def test_bad_requests_are_invalid_config(name: str, shape: tuple[int, ...], needle: str) -> None:
    """Unknown names and inputs an architecture cannot take raise InvalidConfig with the reason."""
    with pytest.raises(InvalidConfig, match=needle):
        zoo.build(name, num_classes=10, input_shape=shape)


def test_default_norm_only_for_matching_rgb_inputs() -> None:
    """ResNets and VGGs carry the RGB training normalization; grayscale data or LeNet get none."""
    assert zoo.default_norm("resnet56", (3, 32, 32)) == zoo.DEFAULT_NORM["resnet56"]
    assert zoo.default_norm("vgg19", (3, 32, 32)) is not None
    assert zoo.default_norm("resnet56", (1, 32, 32)) is None
    assert zoo.default_norm("lenet5", (1, 28, 28)) is None
