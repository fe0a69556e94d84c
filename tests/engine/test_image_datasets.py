"""Image datasets as users have them: mixed sizes, formats and modes, no val/, a corrupt file; streamed."""

from __future__ import annotations

import gc
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.engine.image_archives import CLASSES, Kind, encoded, imagenet_members, write_archive
from workers.compression import cli, library_models, streaming
from workers.compression.architectures import parse_architecture
from workers.compression.config import DataOptions
from workers.compression.datasets import ArrayBundle, load_dataset
from workers.compression.errors import InvalidDataset
from workers.compression.image_folders import index_image_folder
from workers.compression.preprocessing import Preprocessing
from workers.compression.streaming import StreamingBundle

ROOT = Path(__file__).resolve().parents[2]
PRE = Preprocessing(40, 0.875, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3, "test")


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_every_container_indexes_the_same_split(tmp_path: Path, kind: Kind) -> None:
    """Without val/, 10% of each class is split off with the seed; the corrupt file is skipped and named."""
    index = index_image_folder(write_archive(tmp_path / "d", kind, imagenet_members()), kind, seed=3)
    assert index.classes == list(CLASSES)
    assert index.unreadable == ["train/cat/broken0.jpg"]
    assert index.split == {"val_from": "split", "seed": 3, "fraction": 0.1, "train": 108, "val": 12}
    assert np.bincount(index.val[1]).tolist() == [4, 4, 4]  # stratified
    assert len(index.sizes) > 10
    assert not index.gray
    again = index_image_folder(write_archive(tmp_path / "e", kind, imagenet_members()), kind, seed=3)
    assert np.array_equal(again.val[0], index.val[0])


def test_streamed_batches_are_the_models_size_in_rgb(tmp_path: Path) -> None:
    """Gray, RGBA, palette and WebP images all come out (3, 40, 40); every train image once per pass."""
    bundle = load_dataset(write_archive(tmp_path / "d.zip", "zip", imagenet_members()), DataOptions(),
                          preprocessing=PRE)
    assert isinstance(bundle, StreamingBundle)
    assert bundle.input_shape == (3, 40, 40)
    assert bundle.facts["storage"] == "streaming"
    labels = [y for _, y in bundle.batches("train", 32, shuffle=True, generator=torch.Generator())]
    assert sum(len(y) for y in labels) == bundle.train_samples == 108
    x, _ = next(bundle.batches("val", 4, shuffle=False))
    assert x.shape == (4, 3, 40, 40)
    assert x.dtype == torch.float32
    again, _ = next(bundle.batches("val", 4, shuffle=False))
    assert torch.equal(x, again)  # evaluation is deterministic: resize + center crop


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    """A 60x30 JPEG tagged "rotate 90" is a 30x60 image, as a photo viewer shows it."""
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 30), (200, 10, 10)).save(buf, format="JPEG", exif=exif.tobytes())
    members = {**imagenet_members(4, corrupt=0), "train/cat/rotated.jpg": buf.getvalue()}
    index = index_image_folder(write_archive(tmp_path / "d.zip", "zip", members), "zip", seed=0)
    assert index.sizes[(30, 60)] == 1


def test_too_many_unreadable_images_are_refused_by_name(tmp_path: Path) -> None:
    """More than 1% unreadable: the dataset is refused, quoting the first few names."""
    path = write_archive(tmp_path / "d.tar", "tar", imagenet_members(10, corrupt=3))
    with pytest.raises(InvalidDataset, match=r"3 of 33 images are unreadable.*broken0\.jpg"):
        index_image_folder(path, "tar", seed=0)


def test_small_same_size_images_stay_in_memory_with_cifar_augmentation(tmp_path: Path) -> None:
    """32x32 images of one size are decoded once (the CIFAR path); val/ given is used as is."""
    rng = np.random.default_rng(0)
    members = {f"{split}/{name}/{i}.png": encoded(rng, label, (32, 32), "PNG")
               for split in ("train", "val") for label, name in enumerate(CLASSES) for i in range(3)}
    bundle = load_dataset(write_archive(tmp_path / "d.tar.gz", "tar.gz", members), DataOptions())
    assert isinstance(bundle, ArrayBundle)
    assert (bundle.train_samples, bundle.val_samples, bundle.input_shape) == (9, 9, (3, 32, 32))
    assert bundle.facts["split"]["val_from"] == "the data's own validation split"


def test_the_loader_decodes_only_what_it_yields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory bound: in-process, taking one batch decodes one batch of images, not the dataset."""
    decoded: list[int] = []
    real = streaming.decode

    def counting(*args: Any) -> Image.Image:
        decoded.append(1)
        return real(*args)

    monkeypatch.setattr(streaming, "decode", counting)
    bundle = load_dataset(write_archive(tmp_path / "d.zip", "zip", imagenet_members()), DataOptions(),
                          preprocessing=PRE)
    assert isinstance(bundle, StreamingBundle)
    bundle.workers = 0
    batches = bundle.batches("train", 8, shuffle=True)
    next(batches)
    assert len(decoded) == 8
    next(batches)
    assert len(decoded) == 16


def test_tar_gz_cache_goes_with_the_index(tmp_path: Path) -> None:
    """A .tar.gz is decompressed once into a private cache file that is deleted with its index."""
    path = write_archive(tmp_path / "d.tgz", "tar.gz", imagenet_members(5, corrupt=0))
    index = index_image_folder(path, "tar.gz", seed=0)
    cache = Path(index.source.path)  # type: ignore[attr-defined]
    assert cache.is_file()
    assert cache.name == "data.tar"
    del index
    gc.collect()
    assert not cache.parent.exists()


def test_imagenet_style_archive_through_compress(tmp_path: Path) -> None:
    """A torchvision model at 48 px on an ImageNet-style zip without val/: verified ONNX; the report shows
    the split, the skipped file and per-epoch throughput."""
    model = library_models.build(parse_architecture("torchvision/resnet18"), num_classes=3, image_size=48)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    data = write_archive(tmp_path / "data.zip", "zip", imagenet_members())
    out = tmp_path / "out"
    assert cli.main(["--model", str(tmp_path / "w.safetensors"), "--dataset", str(data), "--architecture",
                     "torchvision/resnet18", "--image-size", "48", "--method", "l1", "--pruning-ratio", "0.3",
                     "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    inputs = report["inputs"]
    assert inputs["split"] == {"val_from": "split", "seed": 0, "fraction": 0.1, "train": 108, "val": 12}
    assert inputs["unreadable"] == ["train/cat/broken0.jpg"]
    assert (inputs["train_samples"], inputs["val_samples"], inputs["storage"]) == (108, 12, "streaming")
    assert inputs["input_shape"] == [3, 48, 48]
    assert report["verification"]["passed"]
    # What a user does with the artifact: feed it as its metadata says, on the same (seeded) val split.
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "verify_onnx.py"), str(out / "model.onnx"),
                            str(data), "--report", str(out / "report.json")], capture_output=True, text=True,
                           cwd=ROOT, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    epoch = report["history"][-1]
    assert epoch["images_per_s"] > 0
    assert 0 <= epoch["data_wait_share"] <= 1


def test_gray_images_of_several_sizes_stream_as_one_channel_at_their_commonest_side(tmp_path: Path) -> None:
    """A model without a fixed size or channel count (a zoo network) gets gray data as gray, at the
    commonest short side, normalized with statistics computed from the data."""
    rng = np.random.default_rng(0)
    sizes = [(70, 50), (70, 50), (90, 60)]
    members = {f"train/{name}/{i}.png": encoded(rng, label, sizes[i % 3], "PNG", "L")
               for label, name in enumerate(CLASSES) for i in range(6)}
    bundle = load_dataset(write_archive(tmp_path / "d.zip", "zip", members), DataOptions())
    assert isinstance(bundle, StreamingBundle)
    assert bundle.input_shape == (1, 50, 50)
    assert len(bundle.mean) == 1
    x, _ = next(bundle.batches("val", 3, shuffle=False))
    assert x.shape == (3, 1, 50, 50)
