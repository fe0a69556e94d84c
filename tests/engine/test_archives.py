"""Image-folder archives: good layouts in every container indexed for random access, the packed index's
memory per image, and every unsafe or malformed archive refused."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import threading
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from PIL import Image

from tests.engine.image_archives import write_archive
from workers.compression.archives import ArchiveLimits
from workers.compression.config import DataOptions
from workers.compression.datasets import load_dataset
from workers.compression.errors import InvalidDataset
from workers.compression.gunzip import GunzipReader
from workers.compression.image_folders import STREAM_LIMITS, index_image_folder
from workers.compression.image_index import ImageIndex, ImageSource
from workers.compression.images import Unreadable, decode

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


def _index(path: Path, kind: Kind, limits: ArchiveLimits = STREAM_LIMITS) -> ImageIndex:
    """Indexes an image-folder archive with seed 0."""
    return index_image_folder(path, kind, seed=0, limits=limits)


def _pixels(index: ImageIndex, split: Literal["train", "val"]) -> dict[str, tuple[int, int]]:
    """Returns {member name: (label, first red value)} of a split, each image read back by its key."""
    keys, labels = index.train if split == "train" else index.val
    out = {}
    for key, label in zip(keys.tolist(), labels.tolist(), strict=True):
        image = decode(index.source.name(key), index.source.read(key), "RGB", STREAM_LIMITS.max_image_pixels)
        out[index.source.name(key)] = (label, int(np.asarray(image)[0, 0, 0]))
    return out


def _tar_with(path: Path, info: tarfile.TarInfo) -> Path:
    """Writes a tar holding the good layout plus one special member."""
    write_archive(path, "tar", LAYOUT)
    with tarfile.open(path, "a") as tf:
        tf.addfile(info)
    return path


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_every_container_reads_each_image_back_by_key(tmp_path: Path, kind: Kind) -> None:
    """Each container gives the same splits, labels by sorted class name, and each image's own bytes."""
    index = _index(write_archive(tmp_path / "d", kind, LAYOUT), kind)
    assert index.classes == ["cat", "dog"]
    assert index.split["val_from"] == "the data's own validation split"
    train = _pixels(index, "train")
    assert {k: v[0] for k, v in train.items()} == {"train/cat/b.png": 0, "train/cat/a.png": 0,
                                                     "train/dog/x.jpg": 1}
    assert (train["train/cat/a.png"][1], train["train/cat/b.png"][1]) == (20, 10)
    assert abs(train["train/dog/x.jpg"][1] - 200) <= 2  # JPEG is lossy
    assert _pixels(index, "val") == {"val/dog/y.png": (1, 30), "val/cat/z.png": (0, 40)}


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                    zipfile.ZIP_LZMA])
def test_every_zip_method_and_zip64_and_prepended_data_read_back(
    tmp_path: Path, method: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Members come back byte for byte whatever the compression, with ZIP64 directory fields (as an archive
    over 4 GiB has them), an archive comment, and bytes prepended to the archive (as a self-extractor has)."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 64)  # every later offset goes to a ZIP64 extra field
    plain = tmp_path / "d.zip"
    with zipfile.ZipFile(plain, "w", method) as zf:
        zf.writestr("data/", b"")  # a directory entry
        for name, data in LAYOUT.items():
            zf.writestr(f"data/{name}", data)
        zf.comment = b"PK\x05\x06 a comment that looks like an end record"
    prepended = tmp_path / "sfx.zip"
    prepended.write_bytes(b"#!/bin/sh\nexit 0\n" * 50 + plain.read_bytes())
    for path in (plain, prepended):
        index = _index(path, "zip")
        read = {index.source.name(k): index.source.read(k) for k in (*index.train[0], *index.val[0])}
        assert read == {f"data/{name}": data for name, data in LAYOUT.items()}


def test_a_zip_member_whose_data_fails_its_crc_is_unreadable_when_read(tmp_path: Path) -> None:
    """A member whose stored bytes were altered after indexing is Unreadable (skipped), not a crash."""
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in LAYOUT.items():
            zf.writestr(name, data)
    index = _index(path, "zip")
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"IDAT") + 8] ^= 0xFF  # inside the first stored PNG's pixel data
    path.write_bytes(bytes(raw))
    source = pickle.loads(pickle.dumps(index.source))  # as a loader worker gets it: the file reopened
    broken = [source.name(k) for k in range(5) if _fails(source, k)]
    assert broken == [next(iter(LAYOUT))]


def _fails(source: ImageSource, key: int) -> bool:
    """Says whether reading image `key` raises Unreadable."""
    try:
        source.read(key)
    except Unreadable:
        return True
    return False


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_the_index_costs_a_few_dozen_bytes_per_image(tmp_path: Path, kind: Kind) -> None:
    """Indexing 20,000 members leaves under 100 bytes per image allocated (paths included), and never
    needs more than 200 on the way: no per-member Python object survives, the archive readers' included."""
    image = _png(1, (2, 2))
    members = {f"train/c{i % 10}/{i:06d}.png": image for i in range(20_000)}
    path = write_archive(tmp_path / "d", kind, members)
    _index(write_archive(tmp_path / "warm", kind, LAYOUT), kind)  # imports and first-use caches
    tracemalloc.start()
    try:
        index = _index(path, kind)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert index.split["train"] + index.split["val"] == 20_000
    assert kept / 20_000 < 100
    assert peak / 20_000 < 200


def test_root_folder_clutter_and_palette(tmp_path: Path) -> None:
    """One wrapping folder and macOS clutter are fine; palette PNGs decode to RGB."""
    members = {"data/train/a/0.png": _png(5, mode="P"), "data/val/a/1.png": _png(6, mode="P"),
               "__MACOSX/data/._x": b"junk", "data/.DS_Store": b"junk"}
    index = _index(write_archive(tmp_path / "d.zip", "zip", members), "zip")
    assert (index.split["train"], index.split["val"], index.classes) == (1, 1, ["a"])
    assert set(_pixels(index, "train")) == {"data/train/a/0.png"}


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
        _index(path, "tar")


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
        _index(path, kind)


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    """A ZIP entry whose Unix mode says symlink is refused."""
    path = write_archive(tmp_path / "d.zip", "zip", LAYOUT)
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("train/cat/link.png")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(InvalidDataset, match="link"):
        _index(path, "zip")


def test_zip_bomb_is_refused(tmp_path: Path) -> None:
    """A member that expands ~1000x is refused from its header, before it is inflated."""
    path = write_archive(tmp_path / "bomb.zip", "zip", {**LAYOUT, "train/cat/zeros.png": bytes(4 << 20)})
    assert path.stat().st_size < 64 << 10
    with pytest.raises(InvalidDataset, match="zip bomb"):
        _index(path, "zip")


def test_tar_gz_bomb_is_refused_while_streaming(tmp_path: Path) -> None:
    """A .tar.gz whose stream expands far beyond its compressed size is stopped mid-read."""
    path = write_archive(tmp_path / "bomb.tgz", "tar.gz", {**LAYOUT, "train/cat/zeros.png": bytes(4 << 20)})
    with pytest.raises(InvalidDataset, match="decompression bomb"):
        _index(path, "tar.gz")


@pytest.mark.parametrize(
    ("limits", "words"),
    [(ArchiveLimits(max_members=3), "members"),
     (ArchiveLimits(max_member_bytes=50), "at most 50"),
     (ArchiveLimits(max_total_bytes=500), "exceed 500 bytes")],
)
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_limits_are_enforced(tmp_path: Path, kind: Kind, limits: ArchiveLimits, words: str) -> None:
    """Member count, per-file size and total size each have a limit."""
    path = write_archive(tmp_path / "d", kind, LAYOUT)
    with pytest.raises(InvalidDataset, match=words):
        _index(path, kind, limits)


def _png_header(width: int, height: int) -> bytes:
    """Returns a PNG that declares width x height RGB pixels but holds no image data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize(("side", "limits"), [(100_000, STREAM_LIMITS), (5000, STREAM_LIMITS),
                                              (64, ArchiveLimits(max_image_pixels=1000))])
def test_huge_declared_png_is_refused_before_decoding(
    tmp_path: Path, side: int, limits: ArchiveLimits,
) -> None:
    """A PNG header declaring too many pixels is refused without allocating them."""
    before = Image.MAX_IMAGE_PIXELS
    path = write_archive(tmp_path / "d.zip", "zip", {**LAYOUT, "train/cat/huge.png": _png_header(side, side)})
    with pytest.raises(InvalidDataset, match="pixels"):
        _index(path, "zip", limits)
    assert before == Image.MAX_IMAGE_PIXELS  # Pillow's global is untouched


@pytest.mark.parametrize(
    ("extra", "words"),
    [({"train/cat/notes.txt": b"hi"}, "not a .png"),
     ({"train/cat/bad.png": b"\x89PNG broken"}, "1 of 6 images are unreadable"),
     ({"test/cat/0.png": _png(1)}, "layout"),
     ({"val/bird/0.png": _png(1)}, "no training images")],
)
def test_malformed_content_is_refused(tmp_path: Path, extra: dict[str, bytes], words: str) -> None:
    """Non-images, too many corrupt images, a wrong layout and unknown val classes are refused."""
    path = write_archive(tmp_path / "d.zip", "zip", {**LAYOUT, **extra})
    with pytest.raises(InvalidDataset, match=words):
        _index(path, "zip")


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_truncated_archive_is_refused(tmp_path: Path, kind: Kind) -> None:
    """An archive cut short is an invalid dataset, not a crash."""
    path = write_archive(tmp_path / "d", kind, LAYOUT)
    path.write_bytes(path.read_bytes()[:-60])
    with pytest.raises(InvalidDataset, match="corrupt"):
        _index(path, kind)


def test_a_tar_gz_refused_half_way_leaves_no_inflating_thread(tmp_path: Path) -> None:
    """The archive is refused at its first member; the thread inflating the 16 MB behind it stops then."""
    noise = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    members = {"train/cat/notes.txt": b"hi", **{f"train/cat/{i}.png": noise for i in range(16)}}
    path = write_archive(tmp_path / "d.tgz", "tar.gz", members)
    with pytest.raises(InvalidDataset, match=r"not a \.png"):
        _index(path, "tar.gz")
    assert not [t for t in threading.enumerate() if t.name == "gunzip"]


def _gunzipped(path: Path) -> bytes:
    """Reads a gzip file whole through GunzipReader, in tar's 10 KB reads."""
    with GunzipReader(path) as reader:
        return b"".join(iter(lambda: reader.read(10240), b""))


def test_gunzip_reads_every_member_past_zero_padding_and_refuses_a_cut_stream(tmp_path: Path) -> None:
    """Concatenated gzip members come out in order (padding skipped, as gzip does); a stream cut short,
    an empty file and garbage raise the errors the tar reader maps to InvalidDataset."""
    payload = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes() + bytes(5 << 20)
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(payload) + gzip.compress(b"second") + bytes(100))
    assert _gunzipped(path) == payload + b"second"
    path.write_bytes(gzip.compress(payload)[:-100])
    with pytest.raises(EOFError):
        _gunzipped(path)
    path.write_bytes(b"")
    with pytest.raises(EOFError):
        _gunzipped(path)
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(zlib.error):
        _gunzipped(path)


def test_gunzip_closed_early_stops_its_thread(tmp_path: Path) -> None:
    """A reader closed mid-stream (the archive refused half-way) leaves no thread behind."""
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(bytes(64 << 20), compresslevel=1))
    reader = GunzipReader(path)
    assert reader.read(10) == bytes(10)
    reader.close()
    assert not reader._thread.is_alive()
