"""Model loading: safetensors into zoo architectures (strict), ONNX dispatch, and refusals with reasons."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.engine.model_files import REFUSED_WRITERS, TinyConvNet, export_onnx
from workers.compression import zoo
from workers.compression.errors import InvalidConfig, InvalidModel, UnsupportedModelFormat
from workers.compression.model_io import load_model

LENET_SHAPE = (1, 16, 16)


Edit = Callable[[dict[str, torch.Tensor]], None]


def _lenet_file(path: Path, *, classes: int = 4, edit: Edit | None = None) -> tuple[Path, torch.nn.Module]:
    """Saves a random LeNet-5's weights (optionally edited) and returns the path and the model."""
    torch.manual_seed(0)
    model = zoo.build("lenet5", num_classes=classes, input_shape=LENET_SHAPE).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if edit is not None:
        edit(state)
    save_file(state, str(path))
    return path, model


def _load(path: Path, architecture: str | None = "lenet5", classes: int = 4) -> torch.nn.Module:
    """Loads `path` for LeNet-sized data with `classes` classes and returns the module."""
    return load_model(path, architecture=architecture, input_shape=LENET_SHAPE, num_classes=classes).module


def test_safetensors_round_trip_gives_the_same_outputs(tmp_path: Path) -> None:
    """Weights saved from a zoo model load strictly into an eval-mode float32 twin with equal outputs."""
    path, model = _lenet_file(tmp_path / "w.bin")
    loaded = load_model(path, architecture="lenet5", input_shape=LENET_SHAPE, num_classes=4)
    assert loaded.format == "safetensors"
    assert loaded.default_norm is None
    assert not loaded.module.training
    x = torch.randn(3, *LENET_SHAPE)
    assert torch.equal(loaded.module(x), model(x))


def test_resnet_weights_without_batch_counters_load_with_default_norm(tmp_path: Path) -> None:
    """Reference files omit num_batches_tracked; float16 becomes float32; the RGB norm comes along."""
    model = zoo.build("resnet20", num_classes=10, input_shape=(3, 32, 32))
    state = {k: v.half() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(tmp_path / "r20.safetensors"))
    loaded = load_model(tmp_path / "r20.safetensors", architecture="resnet20", input_shape=(3, 32, 32),
                        num_classes=10)
    assert loaded.default_norm == zoo.DEFAULT_NORM["resnet20"]
    assert all(p.dtype == torch.float32 for p in loaded.module.parameters())


def test_weights_with_more_classes_than_labels_keep_their_head(tmp_path: Path) -> None:
    """A 4-class head serves a dataset whose labels only reach 2; labels beyond the head are refused."""
    path, _ = _lenet_file(tmp_path / "w.safetensors")
    loaded = load_model(path, architecture="lenet5", input_shape=LENET_SHAPE, num_classes=3)
    assert loaded.num_classes == 4
    with pytest.raises(InvalidModel, match="4 outputs"):
        _load(path, classes=6)


def _drop_bias(state: dict[str, torch.Tensor]) -> None:
    """Removes one key."""
    del state["fc1.bias"]


def _add_extra(state: dict[str, torch.Tensor]) -> None:
    """Adds a key the architecture lacks."""
    state["fc9.weight"] = torch.zeros(2)


def _reshape(state: dict[str, torch.Tensor]) -> None:
    """Gives one key the wrong shape."""
    state["fc2.weight"] = torch.zeros(84, 121)


def _to_int(state: dict[str, torch.Tensor]) -> None:
    """Stores one weight as int32."""
    state["fc2.bias"] = state["fc2.bias"].int()


@pytest.mark.parametrize(
    ("edit", "words"),
    [(_drop_bias, "missing keys: fc1.bias"), (_add_extra, "unexpected keys: fc9.weight"),
     (_reshape, r"fc2.weight: file \(84, 121\) vs lenet5 \(84, 120\)"), (_to_int, r"fc2.bias \(I32\)")],
)
def test_mismatched_weights_are_refused_with_the_keys(
    tmp_path: Path, edit: Edit, words: str,
) -> None:
    """Missing, unexpected, misshapen and non-float tensors are named in the error."""
    path, _ = _lenet_file(tmp_path / "w.safetensors", edit=edit)
    with pytest.raises(InvalidModel, match=words):
        _load(path)


def test_wrong_architecture_names_the_stored_one(tmp_path: Path) -> None:
    """Loading ResNet-32 weights as ResNet-20 lists unexpected keys and the metadata's architecture."""
    model = zoo.build("resnet32", num_classes=10, input_shape=(3, 32, 32))
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"), metadata={"architecture": "resnet32"})
    with pytest.raises(InvalidModel, match=r"unexpected keys: layer1\.3\..*metadata says it is a 'resnet32'"):
        load_model(tmp_path / "w.safetensors", architecture="resnet20", input_shape=(3, 32, 32),
                   num_classes=10)


def test_truncated_safetensors_is_invalid_model(tmp_path: Path) -> None:
    """A cut-off file fails in the official reader and is reported as invalid_model."""
    path, _ = _lenet_file(tmp_path / "w.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InvalidModel, match="truncated or malformed"):
        _load(path)


def test_safetensors_without_architecture_is_invalid_config(tmp_path: Path) -> None:
    """Weights alone cannot be loaded; the error lists the architectures to choose from."""
    path, _ = _lenet_file(tmp_path / "w.safetensors")
    with pytest.raises(InvalidConfig, match="resnet56"):
        _load(path, architecture=None)


@pytest.mark.parametrize(("name", "write", "words"), REFUSED_WRITERS)
def test_code_carrying_files_are_never_loaded(
    tmp_path: Path, name: str, write: Callable[[Path, Path], None], words: str,
) -> None:
    """Pickles (.pt/.pth/.pkl), TorchScript and .pt2 are refused before anything is unpickled."""
    path = tmp_path / name
    write(path, tmp_path / "marker")
    with pytest.raises(UnsupportedModelFormat, match=words):
        _load(path)
    assert not (tmp_path / "marker").exists()


def test_onnx_is_dispatched_and_checked_against_the_data(tmp_path: Path) -> None:
    """An ONNX file loads with no architecture; a sample shape unlike the data's is refused."""
    path = export_onnx(TinyConvNet(classes=3), tmp_path / "m.bin", (3, 8, 8), dynamic=True)
    loaded = load_model(path, architecture=None, input_shape=(3, 8, 8), num_classes=3)
    assert (loaded.format, loaded.num_classes, loaded.default_norm) == ("onnx", 3, None)
    with pytest.raises(InvalidModel, match=r"\(3, 8, 8\) but the dataset's are \(1, 8, 8\)"):
        load_model(path, architecture=None, input_shape=(1, 8, 8), num_classes=3)
