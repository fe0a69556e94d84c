"""`.npz` datasets read as untrusted data: every member checked and its real bytes counted before loading.

An `.npz` is a ZIP of `.npy` files, and `numpy.load` trusts each `.npy` header: a header may declare a
shape far larger than the data (numpy allocates it before reading), an object dtype (a pickle), or a
member may decompress to far more than it occupies. `scan_npz` reads every member once as a stream
(nothing extracted, nothing allocated per element) and refuses anything but the four expected numeric
arrays whose headers agree with the bytes that really come out, and whose floats are all finite (NaN in
the data would train to NaN). Torch-free: the upload sandbox uses it.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from workers.compression.errors import InvalidDataset
from workers.compression.zip_errors import ZIP_OPEN_ERRORS, ZIP_READ_ERRORS

__all__ = [
    "DEFAULT_NPZ_LIMITS",
    "SPLITS",
    "NpzLimits",
    "NpzMember",
    "check_labels",
    "check_samples",
    "load_npz",
    "num_classes",
    "sample_shape",
    "scan_npz",
]

SPLITS = ("x_train", "y_train", "x_val", "y_val")
MAX_LABEL = 100_000  # class indices at or above this are refused (a typo, not a real class count)
_CHUNK = 1 << 20
_RATIO_FLOOR = 1 << 20  # below this many bytes a member's compression ratio is not judged
_MAX_NPY_HEADER = 10_000  # numpy's own default bound on the header it evaluates
_COMPRESSIONS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})  # what numpy.savez(_compressed) writes


@dataclass(frozen=True)
class NpzLimits:
    """Bounds on what one `.npz` may make a process read."""

    max_total_bytes: int = 8 << 30  # all members, uncompressed
    max_ratio: float = 200.0  # uncompressed / compressed, per member (judged above 1 MiB)


DEFAULT_NPZ_LIMITS = NpzLimits()


@dataclass(frozen=True)
class NpzMember:
    """One array as its `.npy` header describes it (and the member's bytes confirmed)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[np.generic]


def scan_npz(path: Path, limits: NpzLimits = DEFAULT_NPZ_LIMITS) -> dict[str, NpzMember]:
    """Checks every member of an `.npz` (names, types, headers, sizes, ratio, real bytes); returns them."""
    try:
        zf = zipfile.ZipFile(path)
    except ZIP_OPEN_ERRORS as exc:
        raise InvalidDataset(f"the .npz file is not a readable zip archive ({exc})") from None
    with zf:
        infos = zf.infolist()
        names = [info.filename for info in infos]
        expected = [f"{split}.npy" for split in SPLITS]
        missing = [split for split in SPLITS if f"{split}.npy" not in names]
        if missing:
            found = sorted(name.removesuffix(".npy") for name in names)[:20]
            raise InvalidDataset(f"the .npz lacks {missing}; it needs arrays named {list(SPLITS)} "
                                 f"(found {found})")
        if sorted(names) != sorted(expected):
            extra = sorted(set(names) - set(expected))[:20] or "repeated names"
            raise InvalidDataset(f"the .npz holds members other than {list(SPLITS)}: {extra}; "
                                 "save exactly these four arrays")
        declared = sum(info.file_size for info in infos)
        if declared > limits.max_total_bytes:
            raise InvalidDataset(f"the .npz declares {declared} uncompressed bytes; the limit is "
                                 f"{limits.max_total_bytes}")
        return {info.filename.removesuffix(".npy"): _scan_member(zf, info, limits) for info in infos}


def _scan_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: NpzLimits) -> NpzMember:
    """Reads one member as a stream: its header must be a plain numeric array matching its real size."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise InvalidDataset(f"{name} in the .npz is encrypted")
    if info.compress_type not in _COMPRESSIONS:
        raise InvalidDataset(f"{name} in the .npz uses an unsupported compression; use numpy.savez")
    if info.file_size > _RATIO_FLOOR and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        raise InvalidDataset(f"{name} expands {info.file_size} bytes from {info.compress_size}: more "
                             f"than {limits.max_ratio:g} times; a zip bomb is refused")
    try:
        with zf.open(info) as f:
            shape, dtype, header_len = _read_header(f, name)
            data_len = math.prod(shape) * dtype.itemsize
            if header_len + data_len != info.file_size:
                raise InvalidDataset(f"{name}: its header declares {shape} {dtype} ({data_len} bytes) but "
                                     f"the member holds {info.file_size - header_len} bytes of data")
            drained, nonfinite = _drain(f, dtype)
            counted = header_len + drained
    except ZIP_READ_ERRORS as exc:
        raise InvalidDataset(f"{name} in the .npz is truncated or corrupt ({exc})") from None
    if counted != info.file_size:  # zipfile stops at the declared size; fewer bytes means a lie
        raise InvalidDataset(f"{name} decompresses to {counted} bytes, not the {info.file_size} declared")
    if nonfinite:
        raise InvalidDataset(f"{name} holds {nonfinite} NaN or infinite values; the data must be finite "
                             "numbers")
    return NpzMember(name.removesuffix(".npy"), shape, dtype)


def _read_header(f: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype[np.generic], int]:
    """Parses a `.npy` header (numpy's literal-only parser); refuses pickled, structured or odd dtypes."""
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(f, max_header_size=_MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(f, max_header_size=_MAX_NPY_HEADER)
        else:
            raise InvalidDataset(f"{name} has .npy format version {version}; use numpy.savez")
    except InvalidDataset:
        raise
    except (ValueError, TypeError, SyntaxError, EOFError, OverflowError) as exc:
        raise InvalidDataset(f"{name} has an unreadable .npy header ({exc})") from None
    if dtype.hasobject:
        raise InvalidDataset(f"{name} holds Python objects, which numpy can only read with pickle (a way "
                             "to run code); store plain numeric arrays (uint8/float images, integer labels)")
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
        raise InvalidDataset(f"{name} has dtype {dtype}; store plain numeric arrays")
    if fortran:
        raise InvalidDataset(f"{name} is stored in Fortran order; save a C-ordered array")
    return tuple(int(d) for d in shape), dtype, int(f.tell())  # the data starts where the header ends


def _drain(f: IO[bytes], dtype: np.dtype[np.generic]) -> tuple[int, int]:
    """Reads a member to its end in chunks; returns how many bytes really came out and, for floats, how
    many of the values are NaN or infinite (counted on the way: the data never sits in memory whole)."""
    total = nonfinite = 0
    tail = b""  # a value split across two chunks waits for the rest of its bytes
    while chunk := f.read(_CHUNK):
        total += len(chunk)
        if dtype.kind == "f":
            data = tail + chunk
            whole = len(data) - len(data) % dtype.itemsize
            values = np.frombuffer(data, dtype=dtype, count=whole // dtype.itemsize)
            nonfinite += int(values.size - np.count_nonzero(np.isfinite(values)))
            tail = data[whole:]
    return total, nonfinite


def check_samples(name: str, shape: tuple[int, ...], dtype: np.dtype[np.generic]) -> tuple[int, ...]:
    """Checks an x array's dtype (uint8 or float) and shape (non-empty); returns one sample's shape."""
    if dtype != np.uint8 and dtype.kind != "f":
        raise InvalidDataset(f"{name} has dtype {dtype}; use uint8 (0-255 images) or float")
    sample = sample_shape(shape, name)
    if 0 in shape:
        raise InvalidDataset(f"{name} is empty (shape {shape})")
    return sample


def sample_shape(shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    """Returns one sample's (C, H, W) or (F,) shape for an x array's stored shape (NCHW, NHWC, NHW, NF)."""
    if len(shape) == 3:  # (N, H, W): single-channel images
        return (1, shape[1], shape[2])
    if len(shape) == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3):  # channels last
        return (shape[3], shape[1], shape[2])
    if len(shape) not in (2, 4):
        raise InvalidDataset(f"{name} has shape {shape}; expected (N, C, H, W), (N, H, W, C), "
                             "(N, H, W) or flat (N, F)")
    return tuple(shape[1:])


def check_labels(y: np.ndarray, name: str, n: int) -> np.ndarray:
    """Checks one split's labels (integer class indices, one per sample) and returns them as int64."""
    if y.dtype.kind not in "iu":
        raise InvalidDataset(f"{name} has dtype {y.dtype}; labels must be integers (class indices)")
    if y.shape != (n,):
        raise InvalidDataset(f"{name} has shape {y.shape}; expected ({n},), one label per sample")
    if n and y.min() < 0:
        raise InvalidDataset(f"{name} has negative labels; use class indices 0..K-1")
    if n and y.max() >= MAX_LABEL:
        raise InvalidDataset(f"{name} has label {y.max()}; class indices above {MAX_LABEL - 1} are not "
                             "supported")
    return y.astype(np.int64)


def num_classes(y_train: np.ndarray, y_val: np.ndarray) -> int:
    """Returns the class count the labels imply (largest index + 1); refuses a single class."""
    count = int(max(int(y_train.max()), int(y_val.max()))) + 1
    if count < 2:
        raise InvalidDataset("the labels name a single class; a classifier needs at least two")
    return count


def load_npz(path: Path, arrays: tuple[str, ...] = SPLITS,
             limits: NpzLimits = DEFAULT_NPZ_LIMITS) -> tuple[dict[str, NpzMember], list[np.ndarray]]:
    """Scans an `.npz`, then loads the named arrays without pickle; returns (members, arrays)."""
    members = scan_npz(path, limits)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return members, [npz[name] for name in arrays]
    except ValueError as exc:  # unreachable after the scan, but numpy's own refusal is kept as a backstop
        raise InvalidDataset(f"the .npz holds an array numpy cannot read without pickle ({exc})") from None
    except ZIP_READ_ERRORS as exc:
        raise InvalidDataset(f"the .npz is truncated or corrupt ({exc})") from None
