"""Sniffers: formats told by content alone, code-carrying formats refused with a reason, no torch imported."""

from __future__ import annotations

import gzip
import io
import struct
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.engine.model_files import REFUSED_WRITERS, TinyConvNet, export_onnx
from workers.compression.errors import InvalidDataset, InvalidModel, UnsupportedModelFormat
from workers.compression.sniff import (
    HEAD_BYTES,
    sniff_dataset,
    sniff_dataset_file,
    sniff_model,
    sniff_model_file,
)

ROOT = Path(__file__).resolve().parents[2]


def _head(path: Path) -> bytes:
    """Returns what the service hands the sniffers: the first HEAD_BYTES."""
    return path.read_bytes()[:HEAD_BYTES]


def test_onnx_and_safetensors_are_recognized_by_content(tmp_path: Path) -> None:
    """Real files are classified from their heads and as files, whatever their names."""
    onnx_path = export_onnx(TinyConvNet(), tmp_path / "weights.safetensors", (3, 8, 8))
    st_path = tmp_path / "model.onnx"
    save_file({"w": torch.zeros(300, 300)}, str(st_path))  # > 64 KiB: the head is a prefix
    assert sniff_model(_head(onnx_path)) == "onnx"
    assert sniff_model_file(onnx_path) == "onnx"
    assert sniff_model(_head(st_path)) == "safetensors"
    assert sniff_model_file(st_path) == "safetensors"


@pytest.mark.parametrize(("name", "write", "words"), REFUSED_WRITERS)
def test_code_carrying_models_are_refused(
    tmp_path: Path, name: str, write: Callable[[Path, Path], None], words: str,
) -> None:
    """Pickles, torch.save files, TorchScript and .pt2 are refused saying why and what to send instead."""
    path = tmp_path / name
    write(path, tmp_path / "marker")
    for head in (_head(path), None):
        with pytest.raises(UnsupportedModelFormat) as err:
            sniff_model_file(path) if head is None else sniff_model(head)
        assert words in err.value.message
        assert "ONNX" in err.value.message
        assert "safetensors" in err.value.message
        assert err.value.code == "unsupported_model_format"
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"", "neither"), (b"hello world, not a model", "neither"), (gzip.compress(b"x" * 100), "gzip"),
     (b"\x08\x07\x12\x05hello", "neither")],
)
def test_unknown_model_content_is_refused(content: bytes, words: str) -> None:
    """Empty, text, gzip and near-protobuf garbage are not models."""
    with pytest.raises(UnsupportedModelFormat, match=words):
        sniff_model(content)


def test_npz_as_model_and_huge_safetensors_header_are_refused(tmp_path: Path) -> None:
    """An .npz is a dataset, not a model; a safetensors header beyond the cap is an invalid model."""
    npz = tmp_path / "data.npz"
    np.savez(npz, a=np.zeros(3))
    with pytest.raises(UnsupportedModelFormat, match="dataset format"):
        sniff_model_file(npz)
    with pytest.raises(InvalidModel, match="header"):
        sniff_model(struct.pack("<Q", 1 << 40) + b"{" + b" " * 20)


def _tar(path: Path, *, gz: bool) -> Path:
    """Writes a tar (or tar.gz) with one small member."""
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        info = tarfile.TarInfo("train/cat/0.png")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    return path


def test_dataset_containers_are_recognized(tmp_path: Path) -> None:
    """npz, image zip, tar and tar.gz are told apart by content, from the head and from the file."""
    npz = tmp_path / "a.zip"
    with npz.open("wb") as f:
        np.savez(f, x_train=np.zeros(2), y_train=np.zeros(2))
    images = tmp_path / "b.npz"
    with zipfile.ZipFile(images, "w") as zf:
        zf.writestr("train/cat/0.png", b"abc")
    cases = {npz: "npz", images: "zip", _tar(tmp_path / "c.gz", gz=False): "tar",
             _tar(tmp_path / "d.tar", gz=True): "tar.gz"}
    for path, kind in cases.items():
        assert sniff_dataset(_head(path)) == kind
        assert sniff_dataset_file(path) == kind


def test_zip_with_npy_and_images_is_an_image_zip(tmp_path: Path) -> None:
    """Only a ZIP of nothing but .npy members is an .npz (the central directory decides)."""
    path = tmp_path / "mixed.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x_train.npy", b"abc")
        zf.writestr("train/cat/0.png", b"abc")
    assert sniff_dataset_file(path) == "zip"


@pytest.mark.parametrize(
    ("content", "words"),
    [(gzip.compress(b"not a tar" * 100), "not a tar"), (b"\x93NUMPY\x01\x00", "single .npy"),
     (b"\x80\x04\x95", "pickle"), (b"random bytes", "unrecognized"), (b"PK\x03\x04", "truncated")],
)
def test_bad_dataset_content_is_refused(tmp_path: Path, content: bytes, words: str) -> None:
    """gzip without tar, a lone .npy, pickles, unknown bytes and a broken zip are invalid datasets."""
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    with pytest.raises(InvalidDataset, match=words):
        sniff_dataset_file(path)


def test_torch_file_as_dataset_is_refused(tmp_path: Path) -> None:
    """A torch.save file uploaded as a dataset is refused, not read as an image zip."""
    path = tmp_path / "data.zip"
    torch.save({"x": torch.zeros(2)}, str(path))
    with pytest.raises(InvalidDataset, match=r"torch\.save"):
        sniff_dataset_file(path)


def test_sniff_and_onnx_shape_helpers_import_no_torch(tmp_path: Path) -> None:
    """The service can sniff and read an ONNX input shape without importing torch."""
    path = export_onnx(TinyConvNet(), tmp_path / "m.onnx", (3, 8, 8))
    code = (
        "import sys; from pathlib import Path\n"
        "from workers.compression.sniff import sniff_model_file\n"
        "from workers.compression.onnx_import import onnx_input_shape\n"
        f"assert sniff_model_file(Path({str(path)!r})) == 'onnx'\n"
        f"assert onnx_input_shape(Path({str(path)!r})) == (3, 8, 8)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
