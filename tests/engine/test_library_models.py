"""Models named by their library (torchvision, timm, Hugging Face archives): names, preprocessing, safe
archive reading, strict weight checks, and the whole chain to an ONNX that says how to feed it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from tests.engine.conftest import image_arrays
from tests.engine.hf_files import tiny_vit, write_archive
from workers.compression import cli, hf_archive, library_models, model_io
from workers.compression.architectures import parse_architecture
from workers.compression.config import DataOptions, JobConfig
from workers.compression.errors import InvalidConfig, InvalidModel
from workers.compression.onnx_metadata import read_metadata
from workers.compression.preprocessing import for_architecture

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["resnet56", "torchvision/resnet50", "timm/efficientnet_b0", "hf"])
def test_architecture_forms_are_accepted(name: str) -> None:
    """Zoo names, library builders and `hf` pass the config schema (no torch needed to check them)."""
    config = JobConfig.model_validate(
        {"method": "l1", "architecture": name, "target": {"pruning_ratio": 0.5}}
    )
    assert str(parse_architecture(config.architecture or "")) == name


@pytest.mark.parametrize(
    "name",
    ["resnet", "timm/", "timm/../evil", "keras/resnet50", "timm/vit.augreg_in21k", "torchvision/ResNet50"],
)
def test_unknown_architecture_forms_are_refused(name: str) -> None:
    """Anything else is a validation error that lists the accepted forms."""
    with pytest.raises(ValidationError, match="torchvision/<builder>"):
        JobConfig.model_validate({"method": "l1", "architecture": name, "target": {"pruning_ratio": 0.5}})


def test_library_preprocessing_defaults_and_overrides() -> None:
    """timm's pretrained config and torchvision's weight transforms give size, crop and mean/std; `data`
    options win."""
    timm_pre = for_architecture(parse_architecture("timm/vit_tiny_patch16_224"))
    assert (timm_pre.image_size, timm_pre.crop_pct, timm_pre.interpolation) == (224, 0.9, "bicubic")
    assert timm_pre.mean == (0.5, 0.5, 0.5)
    tv = for_architecture(parse_architecture("torchvision/resnet18"))
    assert (tv.image_size, tv.crop_pct, tv.interpolation) == (224, 224 / 256, "bilinear")
    assert tv.mean == (0.485, 0.456, 0.406)
    mine = tv.overridden(DataOptions(image_size=96, interpolation="bicubic", mean=[0.5] * 3, std=[0.25] * 3))
    assert (mine.image_size, mine.interpolation, mine.mean, mine.std) == (
        96,
        "bicubic",
        (0.5,) * 3,
        (0.25,) * 3,
    )


def test_hf_preprocessor_config_is_read() -> None:
    """An image processor's size, crop, resample and mean/std come from preprocessor_config.json."""
    pre = for_architecture(
        parse_architecture("hf"),
        hf_config={"image_size": 224},
        hf_preprocessor={
            "size": {"shortest_edge": 256},
            "do_center_crop": True,
            "crop_size": {"height": 224, "width": 224},
            "resample": 3,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        },
    )
    assert (pre.image_size, pre.crop_pct, pre.interpolation, pre.std) == (
        224,
        224 / 256,
        "bicubic",
        (0.5,) * 3,
    )


@pytest.mark.parametrize("suffix", [".zip", ".tar"])
def test_hf_archive_is_scanned_without_transformers(tmp_path: Path, suffix: str) -> None:
    """Config, image processor and the weights' header come out of a zip or tar (inside one folder)."""
    config, state = tiny_vit()
    path = write_archive(
        tmp_path / f"ckpt{suffix}",
        {"config.json": config, "model.safetensors": state, "preprocessor_config.json": {"resample": 2}},
    )
    found = hf_archive.scan(path)
    assert found.config["model_type"] == "vit"
    assert found.preprocessor == {"resample": 2}
    assert found.tensors["classifier.weight"]["shape"] == [4, 32]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"config.json": {"model_type": "vit", "auto_map": {"AutoModel": "evil.Model"}}}, "auto_map"),
        ({"config.json": {"model_type": "vit"}, "modeling_evil.py": b"import os"}, "holds code"),
        ({"config.json": {"model_type": "vit"}, "pytorch_model.bin": b"\x80\x04."}, "pickled weights"),
        ({"config.json": {"model_type": "vit"}}, "lacks model.safetensors"),
        ({"config.json": {"name": "no type"}}, "model_type"),
        ({"config.json": b"{not json"}, "not valid JSON"),
    ],
)
def test_hf_archives_with_code_or_pickles_are_refused(
    tmp_path: Path, files: dict[str, object], message: str
) -> None:
    """auto_map, code files and pickles are refused before anything is built; so are broken checkpoints."""
    _, state = tiny_vit()
    files = {"model.safetensors": state, **files} if "lacks" not in message else files
    path = write_archive(tmp_path / "bad.zip", files)  # type: ignore[arg-type]
    with pytest.raises(InvalidModel, match=message):
        hf_archive.scan(path)


def test_unknown_library_builders_are_invalid_config() -> None:
    """A builder the library does not have is named in the error."""
    for name in ("torchvision/resnet9000", "timm/not_a_model"):
        with pytest.raises(InvalidConfig, match=name.split("/")[1]):
            library_models.build(parse_architecture(name), num_classes=3, image_size=32, device="meta")


def test_weights_that_do_not_fit_are_refused_before_allocation(tmp_path: Path) -> None:
    """Keys and shapes are checked on the meta device; the class count comes from the classifier rows."""
    ref = parse_architecture("timm/resnet10t")
    model = library_models.build(ref, num_classes=7, image_size=32)
    good = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(good, str(tmp_path / "good.safetensors"))
    loaded = model_io.load_model(
        tmp_path / "good.safetensors", architecture=str(ref), input_shape=(3, 32, 32), num_classes=4
    )
    assert loaded.num_classes == 7
    torch.testing.assert_close(loaded.module.state_dict()["fc.weight"], good["fc.weight"])
    bad = {k: v for k, v in good.items() if not k.startswith("layer4")}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(InvalidModel, match="missing keys: layer4"):
        model_io.load_model(
            tmp_path / "bad.safetensors", architecture=str(ref), input_shape=(3, 32, 32), num_classes=4
        )


def _dataset(tmp_path: Path, size: int = 24, gray: bool = False) -> Path:
    """Writes the tiny quadrant dataset at another image size (so the model's preprocessing resizes it)."""
    arrays = image_arrays()
    for split in ("x_train", "x_val"):
        x = torch.from_numpy(arrays[split]).float()
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="nearest").to(torch.uint8)
        arrays[split] = x[:, :1].numpy() if gray else x.numpy()
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def _compress(model: Path, data: Path, architecture: str, *args: str) -> Path:
    """Runs `secateur compress` for one cheap epoch on CPU; returns the output folder."""
    out = model.parent / "out"
    common = ["--epochs", "1", "--batch-size", "64", "--device", "cpu", "--out", str(out)]
    assert cli.main(["--model", str(model), "--dataset", str(data), "--architecture", architecture, *args,
                     *common]) == 0
    return out


def test_timm_model_runs_the_whole_chain(tmp_path: Path) -> None:
    """timm weights + grayscale data at another size: the data is fitted to the model (3 channels, 32 px),
    the job finishes verified, and report and ONNX metadata carry the preprocessing that the script reads."""
    model = library_models.build(parse_architecture("timm/resnet10t"), num_classes=4, image_size=32)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    data = _dataset(tmp_path, gray=True)
    flags = ("--image-size", "32", "--method", "l1", "--pruning-ratio", "0.5")
    out = _compress(tmp_path / "w.safetensors", data, "timm/resnet10t", *flags)
    report = json.loads((out / "report.json").read_text())
    fed = report["inputs"]["preprocessing"]
    assert (fed["image_size"], fed["channels"], fed["interpolation"]) == (32, 3, "bicubic")
    assert fed["source"] == "timm's config for resnet10t"
    assert report["verification"]["passed"]
    assert report["pruned"]["flops"] < report["baseline"]["flops"] / 1.5
    recorded, _ = read_metadata(onnx.load(str(out / "model.onnx")))
    assert recorded == fed
    check = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "verify_onnx.py"),
            str(out / "model.onnx"),
            str(data),
            "--report",
            str(out / "report.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_hf_archive_runs_the_whole_chain(tmp_path: Path) -> None:
    """A Hugging Face ViT archive is built by transformers from its config, fed at its config's size with
    its processor's mean/std, pruned, exported and verified."""
    config, state = tiny_vit(num_labels=4, image_size=32)
    archive = write_archive(
        tmp_path / "vit.zip",
        {
            "config.json": config,
            "model.safetensors": state,
            "preprocessor_config.json": {
                "size": {"height": 32, "width": 32},
                "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3,
                "resample": 2,
            },
        },
    )
    out = _compress(archive, _dataset(tmp_path), "hf", "--method", "magnitude", "--target-sparsity", "0.5")
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["model_format"] == "hf"
    assert report["inputs"]["preprocessing"]["mean"] == [0.5] * 3
    assert report["inputs"]["preprocessing"]["image_size"] == 32
    assert report["verification"]["passed"]
    assert report["pruned"]["nonzero_params"] < report["baseline"]["nonzero_params"]


def test_models_over_the_onnx_file_limit_are_refused_before_training(
    input_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose weights cannot fit one ONNX file fails at load with invalid_model, not in export."""
    from workers.compression import pipeline

    monkeypatch.setattr(pipeline, "MAX_ONNX_WEIGHT_BYTES", 1024)
    model, data = input_files
    config = JobConfig.model_validate({"method": "magnitude", "target": {"sparsity": 0.5}})
    with pytest.raises(InvalidModel, match="protobuf's 2 GiB limit"):
        pipeline.compress(model_path=model, dataset_path=data, config=config, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["torchvision/mnasnet0_5", "torchvision/regnet_y_400mf"])
def test_builders_with_their_own_loading_rules_load(tmp_path: Path, name: str) -> None:
    """MNASNet checks the state dict's format version; RegNet cannot be built on the meta device."""
    ref = parse_architecture(name)
    model = library_models.build(ref, num_classes=4, image_size=32)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = model_io.load_model(tmp_path / "w.safetensors", architecture=name, input_shape=(3, 32, 32),
                                 num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.module(x), model.eval()(x))


@pytest.mark.parametrize(("declared", "data", "fed"), [
    ((3, 224, 224), (3, 32, 32), (3, 224, 224)),  # resized to the fixed input
    ((3, 224, 224), (1, 40, 30), (3, 224, 224)),  # grayscale repeated, any size
    ((3, None, None), (3, 32, 32), (3, 32, 32)),  # dynamic: the data's own size
    ((3, 224, 224), (4, 32, 32), (4, 224, 224)),  # channels that cannot be fitted stay, and are refused
    ((12,), (12,), (12,)),
])
def test_submit_checks_an_onnx_model_at_the_size_it_will_be_fed(
    declared: tuple[int | None, ...], data: tuple[int, ...], fed: tuple[int, ...]
) -> None:
    """The torch-free submit check fits the data to a fixed ONNX input like the engine will."""
    from workers.compression.validate import fed_shape

    assert fed_shape(declared, data) == fed
