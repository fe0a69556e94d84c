"""Cheap, torch-free detection of upload formats from their content (magic bytes), never from file names.

The service calls `sniff_model`/`sniff_dataset` on the first ~64 KiB of an upload before queueing a job,
so formats that would run code when loaded (pickles, TorchScript, `torch.export` .pt2) are refused early.
`sniff_model_file`/`sniff_dataset_file` also read a ZIP's central directory (names only, nothing
extracted) to tell an `.npz` from an image-folder zip or a PyTorch archive reliably.
"""

from __future__ import annotations

import pickletools
import struct
import zlib
from io import BytesIO
from pathlib import Path
from typing import Literal

from workers.compression import zip_members
from workers.compression.errors import InvalidDataset, InvalidModel, UnsupportedModelFormat
from workers.compression.zip_errors import ZIP_OPEN_ERRORS

__all__ = [
    "HEAD_BYTES",
    "MAX_SAFETENSORS_HEADER",
    "classify_zip_dataset",
    "sniff_dataset",
    "sniff_dataset_file",
    "sniff_model",
    "sniff_model_file",
]

ModelFormat = Literal["onnx", "safetensors", "hf"]  # hf: a checkpoint archive (ZIP or tar)
# parquet: one Parquet file; parquet.zip / parquet.tar: Hugging Face-layout Parquet files in an archive.
DatasetFormat = Literal["npz", "zip", "tar", "tar.gz", "parquet", "parquet.zip", "parquet.tar"]
ZipKind = Literal["npz", "torch", "torchscript", "pt2", "other"]

HEAD_BYTES = 64 * 1024  # how much of a file the sniffers look at
# Our cap on a safetensors JSON header (the library allows 100 MiB); ResNet-110's is ~50 KB.
MAX_SAFETENSORS_HEADER = 8 * 1024 * 1024

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_GZIP_MAGIC = b"\x1f\x8b"
_NPY_MAGIC = b"\x93NUMPY"
_PARQUET_MAGIC = b"PAR1"
_UPLOAD_INSTEAD = ("upload an ONNX file (torch.onnx.export), or the weights as safetensors "
                   "(safetensors.torch.save_file(model.state_dict(), ...)) together with `architecture`")
# ModelProto field number -> protobuf wire type (0 varint, 2 length-delimited), from onnx.proto.
_ONNX_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_ZIP_KIND_WHY = {
    "torch": "a torch.save file (a ZIP holding a pickle, data.pkl)",
    "torchscript": "a TorchScript archive (torch.jit.save: pickles and Python code)",
    "pt2": "a torch.export .pt2 archive (torch.export.load can run code from a tampered file)",
    "npz": "a NumPy .npz archive (that is a dataset format, not a model)",
    "other": "a ZIP archive of an unknown kind",
}


def sniff_model(head: bytes) -> ModelFormat:
    """Returns "onnx", "safetensors" or "hf" (a ZIP/tar that may hold a Hugging Face checkpoint, checked
    member by member later) for a model file's first bytes; refuses every other format."""
    if head.startswith(_ZIP_MAGICS):
        return _refuse_zip_model(_zip_kind(_local_names(head)))
    return _sniff_plain_model(head)


def sniff_model_file(path: Path) -> ModelFormat:
    """Like `sniff_model`, reading a ZIP's member names from its central directory for a precise message."""
    head = _read_head(path)
    if head.startswith(_ZIP_MAGICS):
        return _refuse_zip_model(_zip_kind(_central_names(path) or _local_names(head)))
    return _sniff_plain_model(head)


def sniff_dataset(head: bytes) -> DatasetFormat:
    """Returns the dataset's container format from its first bytes; refuses unknown or unsafe formats."""
    if head.startswith(_ZIP_MAGICS):
        names = _local_names(head)[:1]
        return _zip_dataset(_zip_kind(names), names)
    return _sniff_plain_dataset(head)


def sniff_dataset_file(path: Path) -> DatasetFormat:
    """Like `sniff_dataset`, telling `.npz` from an image zip by all member names (central directory)."""
    head = _read_head(path)
    if head.startswith(_ZIP_MAGICS):
        names = _central_names(path)
        if names is None:
            raise InvalidDataset("the ZIP archive is truncated or corrupt (unreadable central directory)")
        return _zip_dataset(_zip_kind(names), names)
    return _sniff_plain_dataset(head)


def _read_head(path: Path) -> bytes:
    """Returns the first HEAD_BYTES of a file."""
    with path.open("rb") as f:
        return f.read(HEAD_BYTES)


def _sniff_plain_model(head: bytes) -> ModelFormat:
    """Classifies a non-ZIP model head: safetensors, ONNX, or a refusal saying what it looks like."""
    if _is_safetensors(head):
        return "safetensors"
    if len(head) >= 9 and head[8:9] == b"{":
        raise InvalidModel(f"the safetensors header declares {struct.unpack_from('<Q', head)[0]} bytes; "
                           f"the limit is {MAX_SAFETENSORS_HEADER}")
    if _is_onnx(head):
        return "onnx"
    if _is_tar(head):
        return "hf"
    if _is_pickle(head):
        raise UnsupportedModelFormat(
            "this model file is a Python pickle (torch.save / .pt / .pth / .pkl); loading a pickle runs "
            f"code chosen by whoever wrote it, so it is refused: {_UPLOAD_INSTEAD}")
    if head.startswith(_GZIP_MAGIC):
        raise UnsupportedModelFormat(f"this model file is gzip-compressed; {_UPLOAD_INSTEAD}, uncompressed")
    raise UnsupportedModelFormat(f"the model file is neither ONNX nor safetensors (unrecognized content); "
                                 f"{_UPLOAD_INSTEAD}")


def _refuse_zip_model(kind: ZipKind) -> ModelFormat:
    """Accepts a plain ZIP as a checkpoint archive; refuses PyTorch and NumPy archives, naming the kind."""
    if kind == "other":
        return "hf"
    why = "" if kind in ("npz", "other") else " These formats can execute code when loaded."
    raise UnsupportedModelFormat(f"this model file is {_ZIP_KIND_WHY[kind]}, which is not accepted.{why} "
                                 f"Instead, {_UPLOAD_INSTEAD}")


def _sniff_plain_dataset(head: bytes) -> DatasetFormat:
    """Classifies a non-ZIP dataset head: tar, tar.gz, or a refusal."""
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    if _is_tar(head):
        return "parquet.tar" if _all_parquet(_tar_names(head)) else "tar"
    if head.startswith(_GZIP_MAGIC):
        inner = zlib.decompressobj(wbits=31)  # gzip framing
        try:
            start = inner.decompress(head, 512)
        except zlib.error:
            start = b""
        if _is_tar(start):
            return "tar.gz"
        raise InvalidDataset("the dataset is gzip-compressed but not a tar archive; upload .npz, .zip, "
                             ".tar or .tar.gz")
    if head.startswith(_NPY_MAGIC):
        raise InvalidDataset("the dataset is a single .npy array; save x_train, y_train, x_val, y_val "
                             "together with numpy.savez")
    if _is_pickle(head):
        raise InvalidDataset("the dataset is a Python pickle, which can run code when loaded; save plain "
                             "arrays with numpy.savez (x_train, y_train, x_val, y_val) instead")
    raise InvalidDataset("unrecognized dataset format; upload .npz (x_train, y_train, x_val, y_val), an "
                         "image-folder archive (.zip, .tar, .tar.gz with train/<class>/ and optionally "
                         "val/<class>/) or Parquet (one file, or a .zip/.tar of train-*.parquet ...)")


def classify_zip_dataset(names: list[str]) -> DatasetFormat:
    """Returns "npz" or "zip" (image folder) for a ZIP dataset from its member names; refuses PyTorch
    archives. For callers that list a stored ZIP themselves (the service, over ranged reads)."""
    return _zip_dataset(_zip_kind(names), names)


def _zip_dataset(kind: ZipKind, names: list[str]) -> DatasetFormat:
    """Maps a ZIP's kind to "npz", "parquet.zip" or "zip" (image folder); PyTorch archives are refused."""
    if kind == "npz":
        return "npz"
    if kind != "other":
        raise InvalidDataset(f"the dataset is {_ZIP_KIND_WHY[kind]}; upload .npz or an image-folder archive")
    return "parquet.zip" if _all_parquet(names) else "zip"


def _all_parquet(names: list[str]) -> bool:
    """Tells an archive of Parquet files: every file it names (folders and dot-files aside) is `.parquet`."""
    files = [n for n in names if not n.endswith("/") and not n.rsplit("/", 1)[-1].startswith(".")]
    return bool(files) and all(n.endswith(".parquet") for n in files)


def _tar_names(head: bytes) -> list[str]:
    """Returns the file names of the tar headers that lie in `head` (a walk over 512-byte blocks)."""
    names, at = [], 0
    while at + 512 <= len(head) and _is_tar(head[at:at + 263]):
        if head[at + 156:at + 157] in (b"0", b"\0", b"7"):  # files; not folders, PAX or long-name headers
            names.append(head[at:at + 100].split(b"\0", 1)[0].decode("utf-8", "replace"))
        try:
            size = int(head[at + 124:at + 136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            break
        at += 512 + -(-size // 512) * 512
    return names


def _zip_kind(names: list[str]) -> ZipKind:
    """Classifies a ZIP by its member names: numpy .npz, PyTorch archives, or something else."""
    # PyTorch archives put every member under one top folder: "<name>/data.pkl", "<name>/code/...".
    tails = {name.split("/", 1)[1] if "/" in name else name for name in names}
    if "archive_format" in tails or any(t.startswith("models/") for t in tails):
        return "pt2"
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        return "torchscript"
    if any(t.endswith(".pkl") for t in tails) or {"byteorder", "version"} <= tails:
        return "torch"
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    return "other"


def _local_names(head: bytes) -> list[str]:
    """Returns member names of the ZIP local headers found in `head` (a scan; sizes may be deferred)."""
    names, at = [], head.find(b"PK\x03\x04")
    while at != -1 and at + 30 <= len(head):
        name_len = struct.unpack_from("<H", head, at + 26)[0]
        names.append(head[at + 30:at + 30 + name_len].decode("utf-8", "replace"))
        at = head.find(b"PK\x03\x04", at + 30 + name_len)
    return names


def _central_names(path: Path) -> list[str] | None:
    """Returns all member names from a ZIP's central directory, or None when it cannot be read (names
    only: zipfile would build a ZipInfo per member, ~0.5 KB each, in the worker that trains afterwards)."""
    try:
        with path.open("rb") as f:
            return [entry.name for entry in zip_members.entries(f)]
    except ZIP_OPEN_ERRORS:
        return None


def _is_safetensors(head: bytes) -> bool:
    """Tells a safetensors file: a little-endian u64 header length, then a JSON object."""
    if len(head) < 10:
        return False
    (size,) = struct.unpack_from("<Q", head)
    return 2 <= size <= MAX_SAFETENSORS_HEADER and head[8:9] == b"{"


def _is_onnx(head: bytes) -> bool:
    """Tells an ONNX ModelProto by walking its top-level protobuf fields (known numbers, right wire types)."""
    at, seen = 0, set()
    while at < len(head):
        tag, at = _varint(head, at)
        if tag is None or _ONNX_MODEL_FIELDS.get(tag >> 3) != tag & 7:
            return False
        seen.add(tag >> 3)
        value, at = _varint(head, at)
        if value is None:
            return False
        if tag & 7 == 2:
            at += value  # skip the field's bytes; the head may end inside it
    return 7 in seen  # the graph: it follows only small fields, so it starts inside any real head


def _varint(data: bytes, at: int) -> tuple[int | None, int]:
    """Decodes one protobuf varint at `at`; returns (None, at) when it is cut off or too long."""
    value = 0
    for shift in range(0, 64, 7):
        if at >= len(data):
            return None, at
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
    return None, at


def _is_pickle(head: bytes) -> bool:
    """Tells a Python pickle: a protocol 2-5 header, or protocol 0/1 opcodes that parse as a pickle."""
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return True
    if not head or head[:1] not in b"(}]cN)":
        return False
    ops = 0
    try:
        for _ in pickletools.genops(BytesIO(head)):  # parses opcodes only; nothing is executed
            ops += 1
    except (ValueError, EOFError, UnicodeDecodeError, struct.error):
        pass  # a cut-off head ends mid-pickle; what parsed before still counts
    return ops >= 3


def _is_tar(head: bytes) -> bool:
    """Tells a POSIX/GNU tar archive by the "ustar" magic of its first header block."""
    return len(head) >= 263 and head[257:262] == b"ustar"
