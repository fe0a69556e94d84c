"""Image-folder archives: good layouts in every container, and every unsafe or malformed archive refused."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from PIL import Image

from tests.engine.image_archives import write_archive
from workers.compression.archives import ArchiveLimits, read_image_folder
from workers.compression.config import DataOptions
from workers.compression.datasets import load_dataset
from workers.compression.errors import InvalidDataset

Kind = Literal["zip", "tar", "tar.gz"]


def _png(value: int, size: tuple[int, int] = (4, 4), mode: str = "RGB") -> bytes:
    """Returns a PNG of one colour."""
    buf = io.BytesIO()
    Image.new(mode, size, (value,) * len(mode) if mode != "P" else value).save(buf, format="PNG")
    return buf.getvalue()


def _jpg(value: int) -> bytes:
    """Returns a 4x4 RGB JPEG of one colour."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (value, value, value)).save(buf, format="JPEG")
    return buf.getvalue()


LAYOUT = {
    "train/cat/b.png": _png(10), "train/cat/a.png": _png(20), "train/dog/x.jpg": _jpg(200),
    "val/dog/y.png": _png(30), "val/cat/z.png": _png(40),
}


def _tar_with(path: Path, info: tarfile.TarInfo) -> Path:
    """Writes a tar holding the good layout plus one special member."""
    write_archive(path, "tar", LAYOUT)
    with tarfile.open(path, "a") as tf:
        tf.addfile(info)
    return path


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_layout_reads_into_sorted_labelled_arrays(tmp_path: Path, kind: Kind) -> None:
    """Each container gives the same NCHW uint8 arrays, sorted by name, labels by sorted class name."""
    x_train, y_train, x_val, y_val = read_image_folder(write_archive(tmp_path / "d", kind, LAYOUT), kind)
    assert x_train.shape == (3, 3, 4, 4)
    assert x_train.dtype == np.uint8
    assert y_train.tolist() == [0, 0, 1]  # cat/a, cat/b, dog/x
    assert x_train[:2, 0, 0, 0].tolist() == [20, 10]
    assert abs(int(x_train[2, 0, 0, 0]) - 200) <= 2  # JPEG is lossy
    assert y_val.tolist() == [0, 1]  # val/cat/z.png sorts before val/dog/y.png
    assert x_val[:, 0, 0, 0].tolist() == [40, 30]


def test_root_folder_clutter_grayscale_and_palette(tmp_path: Path) -> None:
    """One wrapping folder and macOS clutter are fine; palette PNGs become RGB, grayscale stays 1-channel."""
    members = {"data/train/a/0.png": _png(5, mode="P"), "data/val/a/1.png": _png(6, mode="P"),
               "__MACOSX/data/._x": b"junk", "data/.DS_Store": b"junk"}
    x_train, _, _, _ = read_image_folder(write_archive(tmp_path / "d.zip", "zip", members), "zip")
    assert x_train.shape == (1, 3, 4, 4)
    gray = {"train/a/0.png": _png(5, mode="L"), "val/a/1.png": _png(6, mode="L")}
    x_train, _, x_val, _ = read_image_folder(write_archive(tmp_path / "g.zip", "zip", gray), "zip")
    assert x_train.shape == (1, 1, 4, 4)
    assert int(x_val[0, 0, 0, 0]) == 6


def test_load_dataset_reads_an_image_tar_gz(tmp_path: Path) -> None:
    """load_dataset sniffs the container and builds a normalized bundle from the images."""
    path = write_archive(tmp_path / "upload.bin", "tar.gz", LAYOUT)
    bundle = load_dataset(path, DataOptions())
    assert bundle.input_shape == (3, 4, 4)
    assert bundle.num_classes == 2
    assert bundle.scale == pytest.approx(1 / 255)


def _symlink() -> tarfile.TarInfo:
    """A symlink member pointing outside."""
    info = tarfile.TarInfo("train/a/link.png")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


def _hardlink() -> tarfile.TarInfo:
    """A hard link member."""
    info = tarfile.TarInfo("train/a/hard.png")
    info.type, info.linkname = tarfile.LNKTYPE, "train/cat/a.png"
    return info


def _device() -> tarfile.TarInfo:
    """A character device member."""
    info = tarfile.TarInfo("train/a/dev.png")
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize("make", [_symlink, _hardlink, _device])
def test_tar_links_and_devices_are_refused(tmp_path: Path, make: Callable[[], tarfile.TarInfo]) -> None:
    """Symlinks, hard links and devices in a tar are refused."""
    path = _tar_with(tmp_path / "d.tar", make())
    with pytest.raises(InvalidDataset, match="only plain files"):
        read_image_folder(path, "tar")


@pytest.mark.parametrize(
    ("name", "words"),
    [("/abs/train/a/0.png", "absolute"), ("train/../../etc/0.png", r"outside the archive"),
     ("train/a/inner.zip", "nested archive"), ("train/a/inner.tar.gz", "nested archive"),
     ("C:/train/a/0.png", "absolute"), ("train\\a\\0.png", "non-POSIX")],
)
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_unsafe_names_are_refused(tmp_path: Path, kind: Kind, name: str, words: str) -> None:
    """Absolute paths, traversal, backslashes and nested archives are refused in zip and tar alike."""
    path = write_archive(tmp_path / "d", kind, {**LAYOUT, name: _png(1)})
    with pytest.raises(InvalidDataset, match=words):
        read_image_folder(path, kind)


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    """A ZIP entry whose Unix mode says symlink is refused."""
    path = write_archive(tmp_path / "d.zip", "zip", LAYOUT)
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("train/cat/link.png")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(InvalidDataset, match="link"):
        read_image_folder(path, "zip")


def test_zip_bomb_is_refused(tmp_path: Path) -> None:
    """A member that expands ~1000x is refused from its header, before it is inflated."""
    path = write_archive(tmp_path / "bomb.zip", "zip", {**LAYOUT, "train/cat/zeros.png": bytes(4 << 20)})
    assert path.stat().st_size < 64 << 10
    with pytest.raises(InvalidDataset, match="zip bomb"):
        read_image_folder(path, "zip")


def test_tar_gz_bomb_is_refused_while_streaming(tmp_path: Path) -> None:
    """A .tar.gz whose stream expands far beyond its compressed size is stopped mid-read."""
    path = write_archive(tmp_path / "bomb.tgz", "tar.gz", {**LAYOUT, "train/cat/zeros.png": bytes(4 << 20)})
    with pytest.raises(InvalidDataset, match="decompression bomb"):
        read_image_folder(path, "tar.gz")


@pytest.mark.parametrize(
    ("limits", "words"),
    [(ArchiveLimits(max_members=3), "members"),
     (ArchiveLimits(max_member_bytes=50), "at most 50"),
     (ArchiveLimits(max_total_bytes=500), "exceed 500 bytes"),
     (ArchiveLimits(max_decoded_bytes=100), "decoded")],
)
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_limits_are_enforced(tmp_path: Path, kind: Kind, limits: ArchiveLimits, words: str) -> None:
    """Member count, per-file size, total size and decoded size each have a limit."""
    path = write_archive(tmp_path / "d", kind, LAYOUT)
    with pytest.raises(InvalidDataset, match=words):
        read_image_folder(path, kind, limits)


def _png_header(width: int, height: int) -> bytes:
    """Returns a PNG that declares width x height RGB pixels but holds no image data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize(("side", "limits"), [(100_000, ArchiveLimits()), (5000, ArchiveLimits()),
                                              (64, ArchiveLimits(max_image_pixels=1000))])
def test_huge_declared_png_is_refused_before_decoding(
    tmp_path: Path, side: int, limits: ArchiveLimits,
) -> None:
    """A PNG header declaring too many pixels is refused without allocating them."""
    before = Image.MAX_IMAGE_PIXELS
    path = write_archive(tmp_path / "d.zip", "zip", {**LAYOUT, "train/cat/huge.png": _png_header(side, side)})
    with pytest.raises(InvalidDataset, match="limit"):
        read_image_folder(path, "zip", limits)
    assert before == Image.MAX_IMAGE_PIXELS  # Pillow's global is restored


@pytest.mark.parametrize(
    ("extra", "words"),
    [({"train/cat/big.png": _png(1, (8, 8))}, "share one size"),
     ({"train/cat/notes.txt": b"hi"}, "not a .png"),
     ({"train/cat/bad.png": b"\x89PNG broken"}, "PNG/JPEG"),
     ({"train/cat/rgba.png": _png(1, mode="RGBA")}, "mode"),
     ({"test/cat/0.png": _png(1)}, "layout"),
     ({"val/bird/0.png": _png(1)}, "no training images"),
     ({"train/cat/gray.png": _png(1, mode="L")}, "grayscale")],
)
def test_malformed_content_is_refused(tmp_path: Path, extra: dict[str, bytes], words: str) -> None:
    """Mixed sizes or modes, non-images, corrupt images, wrong layout and unknown val classes are refused."""
    path = write_archive(tmp_path / "d.zip", "zip", {**LAYOUT, **extra})
    with pytest.raises(InvalidDataset, match=words):
        read_image_folder(path, "zip")


def test_missing_val_and_truncated_archive_are_refused(tmp_path: Path) -> None:
    """An archive without val/ images, or cut short, is an invalid dataset."""
    only_train = {k: v for k, v in LAYOUT.items() if k.startswith("train/")}
    with pytest.raises(InvalidDataset, match="both train"):
        read_image_folder(write_archive(tmp_path / "t.zip", "zip", only_train), "zip")
    path = write_archive(tmp_path / "d.tgz", "tar.gz", LAYOUT)
    path.write_bytes(path.read_bytes()[:-60])
    with pytest.raises(InvalidDataset, match="truncated or corrupt"):
        read_image_folder(path, "tar.gz")
