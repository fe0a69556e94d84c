"""safetensors headers read with the official reader, bounded and allow-listed, without torch.

The official reader validates the JSON header itself (offsets contiguous and non-overlapping, shapes
without overflow, the file exactly covered); this adds a smaller header cap than the library's 100 MiB
(`sniff.MAX_SAFETENSORS_HEADER`, 8 MiB) and a dtype allow-list. The upload sandbox and `model_io`
both read headers here.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from workers.compression.errors import InvalidModel
from workers.compression.finite import EXPONENT_MASKS, nonfinite_count
from workers.compression.sniff import MAX_SAFETENSORS_HEADER

__all__ = ["ALLOWED_DTYPES", "MAX_HEADER_BYTES", "TensorTable", "check_finite", "read_header"]

ALLOWED_DTYPES = frozenset({"F32", "F16", "BF16"})
# Integer buffers (BatchNorm's step counter, a Swin relative-position index): the loader requires each to
# be an integer buffer of the architecture too, so no weight can arrive as integers.
INTEGER_DTYPES = frozenset({"I64", "I32", "I16", "I8", "U8", "BOOL"})
MAX_HEADER_BYTES = MAX_SAFETENSORS_HEADER  # one cap for the head sniff and the full read
_LISTED = 12  # how many offending keys an error message names before summarizing
_READ = 64 << 20  # bytes of tensor data read at a time by check_finite


@dataclass(frozen=True)
class TensorTable:
    """What a safetensors header declares: each tensor's shape and dtype, and the free-form metadata."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str]


def read_header(path: Path) -> TensorTable:
    """Parses and checks a safetensors header (size cap, official validation, dtype allow-list)."""
    with path.open("rb") as f:
        prefix = f.read(8)
    if len(prefix) < 8:
        raise InvalidModel("the safetensors file is truncated (no header length)")
    (declared,) = struct.unpack("<Q", prefix)
    size = path.stat().st_size
    if declared > MAX_HEADER_BYTES or declared > size - 8:
        raise InvalidModel(f"the safetensors header declares {declared} bytes (file: {size} bytes; limit "
                           f"{MAX_HEADER_BYTES}); it is truncated or not a real weights file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = list(f.keys())
            shapes = {key: tuple(int(d) for d in f.get_slice(key).get_shape()) for key in keys}
            dtypes = {key: str(f.get_slice(key).get_dtype()) for key in keys}
            metadata = dict(f.metadata() or {})
    except SafetensorError as exc:
        raise InvalidModel(f"the safetensors file is truncated or malformed: {exc}") from None
    _check_dtypes(dtypes)
    return TensorTable(shapes, dtypes, metadata)


def _check_dtypes(dtypes: dict[str, str]) -> None:
    """Refuses tensors outside the float and integer allow-lists (no float64, complex or 8-bit floats)."""
    bad = [f"{key} ({dtype})" for key, dtype in dtypes.items()
           if dtype not in ALLOWED_DTYPES and dtype not in INTEGER_DTYPES]
    if bad:
        raise InvalidModel(f"unsupported tensor dtypes: {listing(bad)}; weights must be float32, float16 "
                           "or bfloat16")


def listing(items: list[str]) -> str:
    """Joins the first few items, saying how many more there are."""
    more = f" … and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return ", ".join(items[:_LISTED]) + more


def check_finite(path: Path) -> None:
    """Refuses float tensors holding NaN or infinity, read in bounded chunks (call after `read_header`,
    whose official validation makes the header's offsets trustworthy)."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        bad = []
        for key, entry in header.items():
            if key == "__metadata__" or entry["dtype"] not in EXPONENT_MASKS:
                continue
            start, end = (int(v) for v in entry["data_offsets"])
            f.seek(8 + length + start)
            found = 0
            while start < end:  # chunks are whole values: every dtype's size divides _READ
                chunk = f.read(min(_READ, end - start))
                start += len(chunk) or end
                found += nonfinite_count(chunk, entry["dtype"])
            if found:
                bad.append(f"{key} ({found})")
    if bad:
        raise InvalidModel(f"tensors with NaN or infinite values: {listing(bad)}; the weights must be finite")
