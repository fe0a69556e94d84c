"""Image-folder archives (`.zip`, `.tar`, `.tar.gz`) read member by member as untrusted data.

Layout: `[root/]train/<class>/*.png|jpg` and `[root/]val/<class>/...`. Nothing is ever extracted to disk:
each member is checked (name, type, size, compression ratio) before its bytes are read into memory, and
each image's declared size is checked before Pillow decodes it.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import stat
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from io import BufferedIOBase, BytesIO
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from workers.compression.errors import InvalidDataset, UserError
from workers.compression.zip_errors import ZIP_OPEN_ERRORS, ZIP_READ_ERRORS

__all__ = [
    "DEFAULT_LIMITS", "ArchiveLimits", "FolderSummary", "Member", "check_member_name", "iter_members",
    "pixel_cap", "read_image_folder", "read_labelled_folder", "scan_image_folder",
]

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_ARCHIVE_SUFFIXES = frozenset({".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".npz"})
_SPLITS = ("train", "val")
_MODES = {"L": "L", "1": "L", "RGB": "RGB", "P": "RGB"}  # stored mode -> the mode we train on
# What zipfile can decompress; anything else is refused before a member is opened.
_ZIP_COMPRESSIONS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_RATIO_FLOOR = 1 << 20  # below this many bytes a stream's compression ratio is not judged yet


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what one archive may make the worker read and decode."""

    max_members: int = 500_000
    max_member_bytes: int = 32 << 20  # one stored file
    max_total_bytes: int = 4 << 30  # all stored files, uncompressed
    max_ratio: float = 200.0  # uncompressed / compressed, per ZIP member and over a .tar.gz stream
    max_image_pixels: int = 4096 * 4096  # one decoded image
    max_decoded_bytes: int = 4 << 30  # all decoded images


DEFAULT_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class FolderSummary:
    """What an image-folder archive holds, learned from image headers alone (nothing decoded)."""

    sample_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    train_images: int
    val_images: int


@dataclass(frozen=True)
class Member:
    """One regular file of an archive: its name, its bytes (maybe only the first), where its data starts."""

    name: str
    data: bytes
    offset: int  # byte offset of the data in the (decompressed) tar stream; -1 in a ZIP (found by name)
    size: int  # the whole member's bytes, even when `data` holds only its head


def iter_members(path: Path, kind: Literal["zip", "tar", "tar.gz"], limits: ArchiveLimits = DEFAULT_LIMITS,
                 *, head: int | None = None, tee: BinaryIO | None = None) -> Iterator[Member]:
    """Yields every regular file after checking its name, type and sizes; `head` reads only that many first
    bytes of each; `tee` receives the whole decompressed tar stream (an on-disk copy to seek in later)."""
    if kind == "zip":
        return _zip_members(path, limits, head)
    return _tar_members(path, kind == "tar.gz", limits, head, tee)


# One image as the walk yields it: (class name, member name, pixels or None when only probed).
_Found = dict[str, list[tuple[str, str, np.ndarray | None]]]


def read_image_folder(
    path: Path, kind: Literal["zip", "tar", "tar.gz"], limits: ArchiveLimits = DEFAULT_LIMITS,
) -> Arrays:
    """Returns (x_train, y_train, x_val, y_val): uint8 (N, C, H, W) images and int64 labels by class name."""
    return read_labelled_folder(path, kind, limits)[0]


def read_labelled_folder(
    path: Path, kind: Literal["zip", "tar", "tar.gz"], limits: ArchiveLimits = DEFAULT_LIMITS,
) -> tuple[Arrays, list[str]]:
    """Like `read_image_folder`, also returning the class names (label i is the i-th name)."""
    found = _walk(path, kind, limits, decode=True)[0]
    return _arrays(found), _classes(found)


def scan_image_folder(
    path: Path, kind: Literal["zip", "tar", "tar.gz"], limits: ArchiveLimits = DEFAULT_LIMITS,
) -> FolderSummary:
    """Checks every member and image header like `read_image_folder`, without decoding any pixels."""
    found, shape = _walk(path, kind, limits, decode=False)
    return FolderSummary(shape, len(_classes(found)), len(found["train"]), len(found["val"]))


def _walk(path: Path, kind: Literal["zip", "tar", "tar.gz"], limits: ArchiveLimits, *, decode: bool
          ) -> tuple[_Found, tuple[int, int, int]]:
    """Reads every member under the limits; decodes the images (or reads only their headers), one size."""
    found: _Found = {split: [] for split in _SPLITS}
    decoded, shape = 0, None
    with pixel_cap(limits.max_image_pixels):
        for member in iter_members(path, kind, limits):
            name, data = member.name, member.data
            place = _place(name)
            if place is None:
                continue
            array = _decode(name, data, limits) if decode else None
            c, h, w = _probe(name, data, limits) if array is None else array.shape
            this = (c, h, w)
            if shape is None:
                shape = this
            elif this != shape:
                raise InvalidDataset(f"{name} is {_describe(this)} but earlier images are "
                                     f"{_describe(shape)}; all images must share one size and mode")
            decoded += math.prod(this)  # uint8 pixels: decoded now, or by the worker later
            if decoded > limits.max_decoded_bytes:
                raise InvalidDataset(f"the decoded images exceed {limits.max_decoded_bytes} bytes")
            found[place[0]].append((place[1], name, array))
    _classes(found)
    assert shape is not None  # _classes refused an archive without images
    return found, shape


def _zip_members(path: Path, limits: ArchiveLimits, head: int | None) -> Iterator[Member]:
    """Yields the members of a ZIP's regular files after checking each entry's name, type and sizes."""
    try:
        zf = zipfile.ZipFile(path)
    except ZIP_OPEN_ERRORS as exc:
        raise InvalidDataset(f"the ZIP archive is corrupt ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise InvalidDataset(f"the archive has {len(infos)} members; the limit is {limits.max_members}")
        if len({i.filename for i in infos}) != len(infos):
            raise InvalidDataset("the archive lists the same member name twice")
        total = 0
        for info in infos:
            check_member_name(info.filename)
            kind = stat.S_IFMT(info.external_attr >> 16)  # Unix file type; 0 when written without one
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise InvalidDataset(f"{info.filename} is a link or special file; only plain files are "
                                     "allowed")
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise InvalidDataset(f"{info.filename} is encrypted")
            if info.compress_type not in _ZIP_COMPRESSIONS:
                raise InvalidDataset(f"{info.filename} uses ZIP compression method {info.compress_type}; "
                                     "use stored, deflate, bzip2 or lzma")
            total += info.file_size
            _check_size(info.filename, info.file_size, total, limits)
            if info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise InvalidDataset(f"{info.filename} expands to {info.file_size} bytes from "
                                     f"{info.compress_size}, more than {limits.max_ratio:g} times: a zip "
                                     "bomb is refused")
            try:
                with zf.open(info) as f:
                    data = f.read(head or limits.max_member_bytes + 1)
            except ZIP_READ_ERRORS as exc:
                raise InvalidDataset(f"{info.filename} cannot be read from the ZIP ({exc})") from None
            yield Member(info.filename, data, -1, info.file_size)


def _tar_members(path: Path, gz: bool, limits: ArchiveLimits, head: int | None, tee: BinaryIO | None,
                 ) -> Iterator[Member]:
    """Yields a tar's regular files, streaming it once through a bounded reader."""
    with path.open("rb") as raw:
        source: BufferedIOBase = gzip.GzipFile(fileobj=raw) if gz else raw
        # Headers (even PAX ones) are read through the bound too, not only the members we look at.
        bounded = _BoundedReader(source, raw, limits, tee)
        count = total = 0
        try:
            with tarfile.open(fileobj=bounded, mode="r|") as tf:  # type: ignore[call-overload]
                for member in tf:
                    count += 1
                    if count > limits.max_members:
                        raise InvalidDataset(f"the archive has more than {limits.max_members} members")
                    check_member_name(member.name)
                    if member.isdir():
                        continue
                    if not member.isreg() or member.issparse():
                        raise InvalidDataset(f"{member.name} is a link, device or special file; only plain "
                                             "files are allowed")
                    total += member.size
                    _check_size(member.name, member.size, total, limits)
                    f = tf.extractfile(member)
                    data = f.read(min(head or member.size, member.size)) if f is not None else b""
                    yield Member(member.name, data, member.offset_data, member.size)
        except (tarfile.TarError, zlib.error, gzip.BadGzipFile, EOFError, OSError) as exc:
            raise InvalidDataset(f"the tar archive is truncated or corrupt ({exc})") from None


class _BoundedReader:
    """A read-only stream that stops a decompression bomb: caps bytes produced and their ratio to input."""

    def __init__(self, source: BufferedIOBase, raw: BufferedIOBase, limits: ArchiveLimits,
                 tee: BinaryIO | None = None) -> None:
        self.source, self.raw, self.limits, self.tee = source, raw, limits, tee
        self.produced = 0

    def read(self, size: int = -1) -> bytes:
        """Reads like the wrapped stream, raising InvalidDataset once the bounds are passed."""
        data = self.source.read(size)
        self.produced += len(data)
        # Tar adds a 512-byte header per member and pads files to 512 bytes: allow for that overhead.
        if self.produced > self.limits.max_total_bytes + 1024 * self.limits.max_members:
            raise InvalidDataset(f"the archive expands beyond {self.limits.max_total_bytes} bytes")
        consumed = max(self.raw.tell(), 1)
        if self.produced > _RATIO_FLOOR and self.produced > self.limits.max_ratio * consumed:
            raise InvalidDataset(f"the archive expands more than {self.limits.max_ratio:g} times its "
                                 "compressed size: a decompression bomb is refused")
        if self.tee is not None:
            self.tee.write(data)
        return data


def check_member_name(name: str, error: type[UserError] = InvalidDataset) -> None:
    """Refuses absolute paths, `..`, backslashes and nested archives (as `error`: the input's own type)."""
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or (parts and parts[0].endswith(":")):
        raise error(f"member {name!r} has an absolute or non-POSIX path")
    if ".." in parts:
        raise error(f"member {name!r} points outside the archive (..)")
    if PurePosixPath(name).suffix.lower() in _ARCHIVE_SUFFIXES:
        raise error(f"member {name!r} is a nested archive; put the files in the archive directly")


def _check_size(name: str, size: int, total: int, limits: ArchiveLimits) -> None:
    """Refuses a member over the per-file limit, or a running total over the archive limit."""
    if size > limits.max_member_bytes:
        raise InvalidDataset(f"{name} has {size} bytes; one file may have at most {limits.max_member_bytes}")
    if total > limits.max_total_bytes:
        raise InvalidDataset(f"the archive's files exceed {limits.max_total_bytes} bytes uncompressed")


def _place(name: str) -> tuple[str, str] | None:
    """Returns (split, class) of an image member, None for macOS/hidden clutter; refuses anything else."""
    parts = PurePosixPath(name).parts
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    if len(parts) == 4 and parts[1] in _SPLITS:  # one wrapping folder, as zipping a directory makes
        parts = parts[1:]
    if len(parts) != 3 or parts[0] not in _SPLITS:
        raise InvalidDataset(f"member {name!r} does not fit the layout train/<class>/<image> or "
                             "val/<class>/<image> (optionally inside one top folder)")
    if PurePosixPath(name).suffix.lower() not in _IMAGE_SUFFIXES:
        raise InvalidDataset(f"member {name!r} is not a .png or .jpg image")
    return parts[0], parts[1]


@contextlib.contextmanager
def pixel_cap(pixels: int) -> Iterator[None]:
    """Sets Pillow's decompression-bomb threshold to `pixels` and makes its warning an error, for a while."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


@contextlib.contextmanager
def _opened(name: str, data: bytes, limits: ArchiveLimits) -> Iterator[Image.Image]:
    """Opens one PNG/JPEG (header only) after checking its declared size and mode; maps Pillow's errors."""
    try:
        with Image.open(BytesIO(data), formats=["PNG", "JPEG"]) as image:
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise InvalidDataset(f"{name} declares {width}x{height} pixels; the limit is "
                                     f"{limits.max_image_pixels} pixels per image")
            if image.mode not in _MODES:
                raise InvalidDataset(f"{name} has pixel mode {image.mode}; use 8-bit RGB or grayscale images")
            yield image
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidDataset(f"{name} is not a decodable PNG/JPEG within the limits ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's ways of saying "truncated or corrupt"
        raise InvalidDataset(f"{name} is a truncated or corrupt image ({exc})") from None


def _decode(name: str, data: bytes, limits: ArchiveLimits) -> np.ndarray:
    """Decodes one PNG/JPEG to uint8 (C, H, W); RGB or grayscale only."""
    with _opened(name, data, limits) as image:
        array = np.asarray(image.convert(_MODES[image.mode]), dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _probe(name: str, data: bytes, limits: ArchiveLimits) -> tuple[int, int, int]:
    """Returns the (C, H, W) an image will decode to, reading only its header."""
    with _opened(name, data, limits) as image:
        width, height = image.size
        return (1 if _MODES[image.mode] == "L" else 3, height, width)


def _describe(shape: tuple[int, ...]) -> str:
    """Says "32x32 RGB" or "28x28 grayscale" for a (C, H, W) shape."""
    return f"{shape[2]}x{shape[1]} {'RGB' if shape[0] == 3 else 'grayscale'}"


def _classes(found: _Found) -> list[str]:
    """Returns the sorted class names of the training split; both splits must hold images of them."""
    if not found["train"] or not found["val"]:
        raise InvalidDataset("the archive needs images under both train/<class>/ and val/<class>/")
    classes = sorted({cls for cls, _, _ in found["train"]})
    extra = sorted({cls for cls, _, _ in found["val"]} - set(classes))
    if extra:
        raise InvalidDataset(f"val has classes with no training images: {extra}")
    return classes


def _arrays(found: _Found) -> Arrays:
    """Stacks each split in name order; labels index the sorted class names of the training split."""
    index = {cls: i for i, cls in enumerate(_classes(found))}
    out: list[np.ndarray] = []
    for split in _SPLITS:
        items = sorted(found[split], key=lambda item: item[1])
        out += [np.stack([a for _, _, a in items if a is not None]),
                np.array([index[c] for c, _, _ in items], dtype=np.int64)]
    return out[0], out[1], out[2], out[3]
