"""Hugging Face checkpoint archives (`.zip` or `.tar` of config.json + model.safetensors
[+ preprocessor_config.json]) read as untrusted data, without transformers and without running anything.

Only the two JSON files are parsed; the weights are streamed out whole (bounded) for the official
safetensors reader. Code files and `auto_map` (which would make transformers import the uploader's code
with `trust_remote_code`) are refused, and so are pickled weights.
"""

from __future__ import annotations

import json
import shutil
import struct
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from workers.compression.archives import check_member_name
from workers.compression.errors import InvalidModel
from workers.compression.sniff import MAX_SAFETENSORS_HEADER
from workers.compression.zip_errors import ZIP_OPEN_ERRORS, ZIP_READ_ERRORS

__all__ = ["CONFIG", "MAX_WEIGHTS_BYTES", "WEIGHTS", "HfCheckpoint", "extract_weights", "scan"]

CONFIG, WEIGHTS, PREPROCESSOR = "config.json", "model.safetensors", "preprocessor_config.json"
MAX_JSON_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 4 << 30
MAX_MEMBERS = 1000
_MAX_RATIO = 200.0  # uncompressed / compressed for a ZIP member (weights compress ~1.1x)
_CODE_SUFFIXES = frozenset({".py", ".pyc", ".pyo", ".pyd", ".pyx", ".so", ".dll", ".dylib", ".sh", ".ipynb"})
_PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
_FORBIDDEN_KEYS = ("auto_map", "trust_remote_code", "custom_pipelines")


@dataclass(frozen=True)
class HfCheckpoint:
    """What a checkpoint archive declares: its config, its image processor's config, its weights' header."""

    config: dict[str, Any]
    preprocessor: dict[str, Any] | None
    weights_member: str
    weights_bytes: int
    tensors: dict[str, dict[str, Any]]  # the safetensors header: key -> {dtype, shape, data_offsets}


@dataclass(frozen=True)
class _Member:
    """One regular file of the archive: its stored name and uncompressed size."""

    name: str
    size: int


def scan(path: Path) -> HfCheckpoint:
    """Lists and checks the archive, parses its JSON files and the weights' header; raises InvalidModel."""
    with _opened(path) as (members, read):
        by_role = _roles(members)
        config = _json(read(by_role[CONFIG], MAX_JSON_BYTES), CONFIG)
        preprocessor = (_json(read(by_role[PREPROCESSOR], MAX_JSON_BYTES), PREPROCESSOR)
                        if PREPROCESSOR in by_role else None)
        weights = by_role[WEIGHTS]
        head = read(weights, 8 + MAX_SAFETENSORS_HEADER)
    _check_config(config, preprocessor)
    return HfCheckpoint(config, preprocessor, weights.name, weights.size, _safetensors_header(head))


def extract_weights(path: Path, checkpoint: HfCheckpoint, dest: Path) -> Path:
    """Streams the weights member to `dest` (at most its declared size) and returns that file's path."""
    with _opened(path) as (members, _):
        member = next((m for m in members if m.name == checkpoint.weights_member), None)
        if member is None:
            raise InvalidModel(f"the archive changed: {checkpoint.weights_member} is gone")
    try:
        with _stream(path, member) as source, dest.open("wb") as out:
            shutil.copyfileobj(_Capped(source, member.size), out, 1 << 20)  # type: ignore[misc]
    except (*ZIP_READ_ERRORS, tarfile.TarError) as exc:
        raise InvalidModel(f"{member.name} cannot be read from the archive ({exc})") from None
    if dest.stat().st_size != member.size:
        raise InvalidModel(f"{member.name} is truncated: {dest.stat().st_size} of {member.size} bytes")
    return dest


def _roles(members: list[_Member]) -> dict[str, _Member]:
    """Finds config.json, model.safetensors and preprocessor_config.json (top level or in one folder);
    refuses code, pickled weights and missing files."""
    by_role: dict[str, _Member] = {}
    for member in members:
        pure = PurePosixPath(member.name)
        suffix = pure.suffix.lower()
        if suffix in _CODE_SUFFIXES:
            raise InvalidModel(f"the archive holds code ({member.name}); code in a checkpoint is never run "
                               "(no trust_remote_code): upload only config.json, model.safetensors and "
                               "preprocessor_config.json")
        if suffix in _PICKLE_SUFFIXES:
            raise InvalidModel(f"the archive holds pickled weights ({member.name}); loading a pickle can run "
                               "code, so it is refused: save the weights as model.safetensors "
                               "(model.save_pretrained(..., safe_serialization=True))")
        if pure.name in (CONFIG, WEIGHTS, PREPROCESSOR) and len(pure.parts) <= 2:
            if pure.name in by_role:
                raise InvalidModel(f"the archive holds two {pure.name} files; put one checkpoint in it")
            by_role[pure.name] = member
    missing = [name for name in (CONFIG, WEIGHTS) if name not in by_role]
    if missing:
        raise InvalidModel(f"the archive lacks {' and '.join(missing)}; a Hugging Face checkpoint archive "
                           "holds config.json and model.safetensors (+ preprocessor_config.json), at its top "
                           "level or inside one folder")
    if by_role[WEIGHTS].size > MAX_WEIGHTS_BYTES:
        raise InvalidModel(f"model.safetensors has {by_role[WEIGHTS].size} bytes; the limit is "
                           f"{MAX_WEIGHTS_BYTES}")
    return by_role


def _check_config(config: dict[str, Any], preprocessor: dict[str, Any] | None) -> None:
    """Refuses remote-code hooks and a config without a model type."""
    for name, document in ((CONFIG, config), (PREPROCESSOR, preprocessor or {})):
        found = [key for key in _FORBIDDEN_KEYS if key in document]
        if found:
            raise InvalidModel(f"{name} sets {found[0]!r}, which makes transformers import code shipped "
                               "with the checkpoint; custom code is never run here. Use a model type "
                               "transformers implements natively")
    if not isinstance(config.get("model_type"), str):
        raise InvalidModel("config.json has no model_type; save the config with model.save_pretrained()")


def _json(data: bytes, name: str) -> dict[str, Any]:
    """Parses one of the archive's JSON files (bounded in size and depth) into a dict."""
    if len(data) > MAX_JSON_BYTES:
        raise InvalidModel(f"{name} is larger than {MAX_JSON_BYTES} bytes")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidModel(f"{name} is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(value, dict):
        raise InvalidModel(f"{name} must hold a JSON object")
    return value


def _safetensors_header(head: bytes) -> dict[str, dict[str, Any]]:
    """Parses a safetensors header from the weights member's first bytes (the worker re-reads it with
    the official reader after extraction)."""
    if len(head) < 8:
        raise InvalidModel("model.safetensors is truncated (no header length)")
    (size,) = struct.unpack_from("<Q", head)
    if size > MAX_SAFETENSORS_HEADER or 8 + size > len(head):
        raise InvalidModel(f"model.safetensors declares a {size}-byte header (limit "
                           f"{MAX_SAFETENSORS_HEADER}); it is truncated or not a safetensors file")
    try:
        header = json.loads(head[8:8 + size])
    except (ValueError, RecursionError):
        raise InvalidModel("model.safetensors has a malformed header (not JSON)") from None
    if not isinstance(header, dict):
        raise InvalidModel("model.safetensors has a malformed header (not a JSON object)")
    header.pop("__metadata__", None)
    return {k: v for k, v in header.items() if isinstance(v, dict)}


Reader = Callable[[_Member, int], bytes]  # reads up to `limit` bytes of a member


@contextmanager
def _opened(path: Path) -> Iterator[tuple[list[_Member], Reader]]:
    """Opens a ZIP or tar archive; yields its regular files and a bounded reader of one member's head."""
    if zipfile.is_zipfile(path):
        with _zip(path) as zf:
            members = [_Member(i.filename, i.file_size) for i in _zip_infos(zf)]

            def read_zip(member: _Member, limit: int) -> bytes:
                """Reads up to `limit` bytes of a ZIP member."""
                try:
                    with zf.open(member.name) as f:
                        return f.read(limit)
                except ZIP_READ_ERRORS as exc:
                    raise InvalidModel(f"{member.name} cannot be read from the ZIP ({exc})") from None

            yield members, read_zip
        return
    with _tar(path) as tf:
        members = [_Member(m.name, m.size) for m in _tar_infos(tf)]

        def read_tar(member: _Member, limit: int) -> bytes:
            """Reads up to `limit` bytes of a tar member."""
            f = tf.extractfile(member.name)
            return f.read(limit) if f is not None else b""

        yield members, read_tar


@contextmanager
def _stream(path: Path, member: _Member) -> Iterator[IO[bytes]]:
    """Opens one member of the archive for streaming."""
    if zipfile.is_zipfile(path):
        with _zip(path) as zf, zf.open(member.name) as f:
            yield f
        return
    with _tar(path) as tf:
        stream = tf.extractfile(member.name)
        if stream is None:
            raise InvalidModel(f"{member.name} is not a regular file")
        yield stream


@contextmanager
def _zip(path: Path) -> Iterator[zipfile.ZipFile]:
    """Opens a ZIP, mapping zipfile's failures to InvalidModel."""
    try:
        zf = zipfile.ZipFile(path)
    except ZIP_OPEN_ERRORS as exc:
        raise InvalidModel(f"the ZIP archive is corrupt ({exc})") from None
    with zf:
        yield zf


@contextmanager
def _tar(path: Path) -> Iterator[tarfile.TarFile]:
    """Opens an uncompressed tar, mapping tarfile's failures to InvalidModel."""
    try:
        tf = tarfile.open(path, mode="r:")  # noqa: SIM115  # closed by the `with` below
    except (tarfile.TarError, OSError) as exc:
        raise InvalidModel(f"the model archive is neither a readable ZIP nor tar ({exc})") from None
    with tf:
        yield tf


def _zip_infos(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """Returns a ZIP's files after checking count, names, encryption and compression ratio."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise InvalidModel(f"the archive has {len(infos)} members; the limit is {MAX_MEMBERS}")
    files = []
    for info in infos:
        check_member_name(info.filename, InvalidModel)
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise InvalidModel(f"{info.filename} is encrypted")
        if info.file_size > _MAX_RATIO * max(info.compress_size, 1) and info.file_size > 1 << 20:
            raise InvalidModel(f"{info.filename} expands {info.file_size / max(info.compress_size, 1):.0f} "
                               "times: a zip bomb is refused")
        files.append(info)
    return files


def _tar_infos(tf: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Returns a tar's regular files after checking count, names and types (no links, no devices)."""
    files = []
    try:
        for count, member in enumerate(tf, start=1):
            if count > MAX_MEMBERS:
                raise InvalidModel(f"the archive has more than {MAX_MEMBERS} members")
            check_member_name(member.name, InvalidModel)
            if member.isdir():
                continue
            if not member.isreg() or member.issparse():
                raise InvalidModel(f"{member.name} is a link, device or special file; only plain files are "
                                   "allowed")
            files.append(member)
    except tarfile.TarError as exc:
        raise InvalidModel(f"the tar archive is truncated or corrupt ({exc})") from None
    return files


class _Capped:
    """A read-only stream that refuses to produce more than `limit` bytes (a lying size header)."""

    def __init__(self, source: IO[bytes], limit: int) -> None:
        self.source, self.left = source, limit

    def read(self, size: int = -1) -> bytes:
        """Reads like the source, raising InvalidModel past the limit."""
        data = self.source.read(size if size >= 0 else self.left + 1)
        self.left -= len(data)
        if self.left < 0:
            raise InvalidModel("the weights member is longer than its header says: refused")
        return data
