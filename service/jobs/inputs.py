"""Cheap checks of a job's inputs before it is queued: the config, and both files' formats by content.

Deep validation (shapes, archive limits, sandboxed parsing) is the worker's; this only refuses early what
can never run, so a user learns in the POST's answer rather than from a failed job.
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

from pydantic import ValidationError

from service.storage.base import ObjectStore
from workers.compression.config import JobConfig
from workers.compression.errors import InvalidConfig, InvalidDataset
from workers.compression.architectures import check_model_format
from workers.compression.sniff import HEAD_BYTES, sniff_dataset, sniff_dataset_file, sniff_model

__all__ = ["HEAD_BYTES", "ZIP_FORMATS", "check_model_fits", "parse_config", "sniff_head", "sniff_zip_dataset"]

_EOCD = b"PK\x05\x06"  # ZIP end of central directory record
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD_MAX = 22 + 0xFFFF  # the record plus the longest comment
ZIP_FORMATS = frozenset({"npz", "zip"})


def parse_config(text: str) -> JobConfig:
    """Parses the `config` part: JSON, then the schema (unknown fields and bad options are refused)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidConfig(f"config is not valid JSON: {exc}") from None
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidConfig(f"invalid config: {problems}") from None


def sniff_head(kind: str, head: bytes) -> str:
    """Returns the format of an upload from its first bytes ("onnx", "npz", …); raises the engine's error."""
    return sniff_model(head) if kind == "model" else sniff_dataset(head)


def check_model_fits(config: JobConfig, model_format: str) -> None:
    """Refuses a model file that does not suit the config (weights without an architecture, say)."""
    check_model_format(model_format, config.architecture)


def sniff_zip_dataset(store: ObjectStore, key: str, size: int, head: bytes, *, max_directory: int) -> str:
    """Classifies a stored ZIP dataset by all its member names (central directory), reading only that.

    The head, the central directory and the end records are copied at their offsets into a sparse temp
    file of the object's size, so the engine's file sniffer sees the archive's layout without the data.
    """
    tail_len = min(size, _EOCD_MAX)
    tail = store.read_range(key, size - tail_len, tail_len)
    at = tail.rfind(_EOCD)
    if at < 0 or at + 22 > len(tail):
        raise InvalidDataset("the ZIP archive is truncated or corrupt (no end of central directory)")
    # Pieces of the archive to lay out in the sparse copy: (offset, bytes).
    pieces = [(0, head[:HEAD_BYTES]), (size - tail_len, tail)]
    cd_size, cd_offset = struct.unpack_from("<II", tail, at + 12)
    if 0xFFFFFFFF in (cd_size, cd_offset):  # ZIP64: sizes live in the ZIP64 end record
        record_at, record = _zip64_record(store, key, tail, at)
        pieces.append((record_at, record))
        cd_size, cd_offset = struct.unpack_from("<QQ", record, 40)
    if cd_size > max_directory:
        raise InvalidDataset(f"the ZIP archive's member list is {cd_size} bytes (limit {max_directory}); "
                             "it has too many files")
    if cd_offset + cd_size > size:
        raise InvalidDataset("the ZIP archive is truncated or corrupt (its central directory is cut off)")
    pieces.append((cd_offset, store.read_range(key, cd_offset, cd_size)))
    with tempfile.TemporaryDirectory(prefix="secateur-zip-") as tmp:
        sparse = Path(tmp) / "archive.zip"
        with sparse.open("wb") as f:
            f.truncate(size)
            for offset, data in pieces:
                f.seek(offset)
                f.write(data)
        return sniff_dataset_file(sparse)


def _zip64_record(store: ObjectStore, key: str, tail: bytes, eocd_at: int) -> tuple[int, bytes]:
    """Returns (offset, bytes) of a ZIP64 archive's end record, which holds its central directory's place."""
    locator = eocd_at - 20
    if locator < 0 or tail[locator:locator + 4] != _EOCD64_LOCATOR:
        raise InvalidDataset("the ZIP64 archive is corrupt (no ZIP64 end locator)")
    (record_at,) = struct.unpack_from("<Q", tail, locator + 8)
    record = store.read_range(key, record_at, 56)
    if len(record) < 56 or record[:4] != b"PK\x06\x06":
        raise InvalidDataset("the ZIP64 archive is corrupt (no ZIP64 end record)")
    return int(record_at), record
