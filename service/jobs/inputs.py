"""Cheap checks of a job's inputs before it is queued: the config, and both files' formats by content.

Deep validation (shapes, archive limits, sandboxed parsing) is the worker's; this only refuses early what
can never run, so a user learns in the POST's answer rather than from a failed job.
"""

from __future__ import annotations

import zipfile

from pydantic import ValidationError

from service.bounds import JsonRefused, load_json
from service.jobs.object_file import ObjectFile, ReadTooLarge
from service.storage.base import ObjectStore
from workers.compression.architectures import check_model_format
from workers.compression.config import JobConfig
from workers.compression.errors import InvalidConfig, InvalidDataset
from workers.compression.sniff import HEAD_BYTES, classify_zip_dataset, sniff_dataset, sniff_model
from workers.compression.zip_errors import ZIP_OPEN_ERRORS

__all__ = ["HEAD_BYTES", "ZIP_FORMATS", "check_model_fits", "parse_config", "sniff_head", "sniff_zip_dataset"]

_EOCD_SCAN = 22 + (1 << 16)  # zipfile's one read looking for the end record: it and up to 64 KiB of comment
ZIP_FORMATS = frozenset({"npz", "zip"})


def parse_config(text: str) -> JobConfig:
    """Parses the `config` part: bounded JSON (depth, number sizes, no NaN/Infinity), then the schema."""
    try:
        raw = load_json(text)
    except JsonRefused as exc:
        raise InvalidConfig(f"config is refused: {exc}") from None
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


def sniff_zip_dataset(store: ObjectStore, key: str, size: int, *, max_directory: int) -> str:
    """Classifies a stored ZIP dataset by all its member names, fetching only its end records and list.

    `zipfile` reads the archive through ranged GETs (ObjectFile); its central directory is fetched in one
    read, which the member-list limit caps before any byte of it is transferred.
    """
    archive = ObjectFile(store, key, size, max_read=max(max_directory, _EOCD_SCAN))
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
    except ReadTooLarge as exc:
        raise InvalidDataset(f"the ZIP archive's member list is {exc.wanted} bytes (limit {exc.limit}); "
                             "it has too many files") from None
    except ZIP_OPEN_ERRORS:
        raise InvalidDataset("the ZIP archive is truncated or corrupt (unreadable member list)") from None
    return classify_zip_dataset(names)  # the engine's own classification by member names
