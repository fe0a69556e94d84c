"""Parquet image datasets in the Hugging Face layout, read with pyarrow one row group at a time.

A dataset is one `.parquet` file (its validation images split off with the seed) or a `.zip`/`.tar` of
`train-*.parquet` and `validation-*.parquet` (else `test-*.parquet`) files, anywhere in the archive. Each
has an image column of `{bytes, path}` structs and an integer label column; class names come from the
schema's `huggingface` metadata (the label's ClassLabel names) when present, else the labels' numbers.

Nothing is read whole: indexing reads the image and label columns one row group at a time (each checked
against MAX_ROW_GROUP_BYTES first), and a sample is read later from its row group, which each process
keeps one of in memory. Files inside an archive are copied once into a private on-disk cache (bounded by
the archive limit on bytes) so pyarrow can seek in them; the dataset check, which must not write, reads
them in place instead.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import stat
import tarfile
import tempfile
import weakref
import zipfile
from array import array
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from workers.compression.archives import check_member_name
from workers.compression.errors import InvalidDataset
from workers.compression.image_folders import STREAM_LIMITS
from workers.compression.image_index import ImageIndex, IndexBuilder, Split
from workers.compression.images import Unreadable, probe
from workers.compression.zip_errors import ZIP_OPEN_ERRORS, ZIP_READ_ERRORS

__all__ = ["MAX_ROW_GROUP_BYTES", "ParquetSource", "index_parquet"]

MAX_ROW_GROUP_BYTES = 512 << 20  # one row group of the image column, as the file's metadata sizes it
_MAX_FILES = 10_000
_LABEL_NAMES = ("label", "labels", "fine_label", "coarse_label", "target", "class")
# File name prefixes of each split, as Hugging Face names them ("train-00000-of-00004.parquet").
_SPLIT_PREFIXES: tuple[tuple[str, Split], ...] = (("train", "train"), ("validation", "val"), ("valid", "val"),
                                                  ("val", "val"), ("test", "val"))
_OPEN_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError)  # pyarrow's ArrowException is OSError


class ParquetSource:
    """Reads one image's bytes by key from its file's row group (the last row group read is kept)."""

    def __init__(self, files: list[Any], names: list[str], image_column: str) -> None:
        self.files = files  # paths (or, for the check only, open archive members)
        self.names = names  # what each file is called in the upload
        self.rows = np.zeros((0, 3), np.int64)  # (N, 3): file, row group, row of each key
        self.image_column = image_column
        self._group: tuple[int, int] | None = None
        self._images: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickles without the cached row group: each DataLoader worker reads its own."""
        return {**self.__dict__, "_group": None, "_images": None}

    def read(self, key: int) -> bytes:
        """Returns image `key`'s encoded bytes."""
        f, g, r = (int(v) for v in self.rows[key])
        if self._group != (f, g):
            table = _read_group(_open(self.files[f]), g, [self.image_column], self.names[f])
            self._images = table.column(0).combine_chunks().field("bytes")
            self._group = (f, g)
        data = self._images[r].as_py()
        return data if isinstance(data, bytes) else b""

    def name(self, key: int) -> str:
        """Returns "file row group g row r" for image `key`."""
        f, g, r = (int(v) for v in self.rows[key])
        return _where(self.names[f], g, r)


def index_parquet(path: Path, kind: str, *, seed: int, cache: bool = True) -> ImageIndex:
    """Indexes a Parquet dataset (headers of every image, labels); raises InvalidDataset."""
    cache_dir = Path(tempfile.mkdtemp(prefix="secateur-parquet-")) if cache and kind != "parquet" else None
    try:
        with contextlib.ExitStack() as stack:
            if kind == "parquet":
                files: list[tuple[Any, str, str | None]] = [(path, "the Parquet file", None)]
            else:
                files = list(_archive_files(path, kind, cache_dir, stack))
            index = _index(_chosen(files), kind, seed)
    except BaseException:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)
        raise
    if cache_dir is not None:
        weakref.finalize(index.source, shutil.rmtree, cache_dir, True)
    return index


def _chosen(files: list[tuple[Any, str, str | None]]) -> list[tuple[Any, str, Split | None]]:
    """Keeps train files and the validation files (else the test files) as val; without both, pools all
    files unsplit (the seed splits them)."""
    kinds = {split for _, _, split in files}
    val = "validation" if "validation" in kinds else "test" if "test" in kinds else None
    if "train" not in kinds or val is None:
        return [(f, name, None) for f, name, _ in files]
    return [(f, name, "train" if split == "train" else "val") for f, name, split in files
            if split in ("train", val)]


def _index(files: list[tuple[Any, str, Split | None]], kind: str, seed: int) -> ImageIndex:
    """Reads the image and label columns row group by row group; builds the index."""
    if not files:
        raise InvalidDataset("the archive holds no .parquet files")
    first = _open(files[0][0])
    image_column, label_column = _columns(first.schema_arrow, files[0][1])
    names = _class_names(first.schema_arrow, label_column)
    rows = array("q")  # (file, row group, row) of each key, packed: 24 bytes per image
    source = ParquetSource([f for f, _, _ in files], [name for _, name, _ in files], image_column)
    builder = IndexBuilder(format=kind, source=source)
    classes = 0
    for f, (file, display, split) in enumerate(files):
        pf = _open(file)
        if _columns(pf.schema_arrow, display) != (image_column, label_column):
            raise InvalidDataset(f"{display} has other image/label columns than {files[0][1]}")
        for g in range(pf.metadata.num_row_groups):
            group = _read_group(pf, g, [image_column, label_column], display)
            images, labels = group.column(0), group.column(1).to_numpy(zero_copy_only=False)
            for r, label in enumerate(labels.tolist()):
                where = _where(display, g, r)
                if label is None or label < 0 or (names is not None and label >= len(names)):
                    raise InvalidDataset(f"{where} has label {label}; labels must be 0..classes-1 (rows of "
                                         "an unlabeled test split cannot train)")
                classes = max(classes, label + 1)
                rows.extend((f, g, r))
                cell = images[r].as_py()
                data = cell.get("bytes") if isinstance(cell, dict) else None
                try:
                    if not isinstance(data, bytes):
                        raise Unreadable("holds no image bytes")
                    facts = probe(where, data, len(data), STREAM_LIMITS.max_image_pixels)
                except Unreadable:
                    builder.skip(where)
                    continue
                builder.add(split, names[label] if names else str(label), len(rows) // 3 - 1, facts)
    source.rows = np.array(np.frombuffer(rows, dtype=np.int64) if rows else [], dtype=np.int64).reshape(-1, 3)
    return builder.finish(seed=seed, class_names=names or [str(i) for i in range(classes)])


def _where(display: str, group: int, row: int) -> str:
    """Names one row for messages."""
    return f"{display} row group {group} row {row}"


def _open(file: Any) -> Any:
    """Opens a Parquet file (a path or a seekable file object) for its metadata; raises InvalidDataset."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file)
    except _OPEN_ERRORS as exc:
        raise InvalidDataset(f"a Parquet file is truncated or corrupt ({exc})") from None


def _read_group(pf: Any, group: int, columns: list[str], display: str) -> Any:
    """Reads some columns of one row group, refusing a row group over MAX_ROW_GROUP_BYTES."""
    size = pf.metadata.row_group(group).total_byte_size
    if size > MAX_ROW_GROUP_BYTES:
        raise InvalidDataset(f"{display} has a row group of {size} bytes; the limit is {MAX_ROW_GROUP_BYTES} "
                             "(write it with a smaller row_group_size)")
    try:
        return pf.read_row_group(group, columns=columns)
    except _OPEN_ERRORS as exc:
        raise InvalidDataset(f"{display} row group {group} cannot be read ({exc})") from None


def _columns(schema: Any, display: str) -> tuple[str, str]:
    """Returns (image column, label column): a {bytes, path} struct and an integer column."""
    import pyarrow as pa

    images = [f.name for f in schema if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0]
    ints = [f.name for f in schema if pa.types.is_integer(f.type)]
    if not images:
        raise InvalidDataset(f"{display} has no image column (a struct of {{bytes, path}}, as Hugging Face "
                             "datasets write images)")
    if not ints:
        raise InvalidDataset(f"{display} has no integer label column")
    image = "image" if "image" in images else images[0]
    label = next((name for name in _LABEL_NAMES if name in ints), ints[0])
    return image, label


def _class_names(schema: Any, label: str) -> list[str] | None:
    """Returns the label's ClassLabel names from the `huggingface` schema metadata, when it has them."""
    raw = (schema.metadata or {}).get(b"huggingface", b"")
    try:
        features = json.loads(raw)["info"]["features"]
        names = features[label]["names"]
    except (TypeError, KeyError, ValueError, IndexError):
        return None
    ok = isinstance(names, list) and 0 < len(names) <= 1_000_000 and all(isinstance(n, str) for n in names)
    return [n[:200] for n in names] if ok else None


def _split_of(name: str) -> str | None:
    """Returns "train", "validation" or "test" from a Hugging Face file name, else None."""
    base = PurePosixPath(name).name.lower()
    for prefix, _ in _SPLIT_PREFIXES:
        if base.startswith((prefix + "-", prefix + "_", prefix + ".")):
            return {"valid": "validation", "val": "validation"}.get(prefix, prefix)
    return None


def _archive_files(path: Path, kind: str, cache_dir: Path | None, stack: contextlib.ExitStack,
                   ) -> Iterator[tuple[Any, str, str | None]]:
    """Yields (path in the cache, or an open member; its name; its split) of every .parquet member,
    after the archive checks: names, plain files only, count, bytes, compression ratio."""
    total = count = 0
    for name, size, opener in _members(path, kind, stack):
        if name.endswith("/") or any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(name).parts):
            continue
        check_member_name(name)
        if not name.endswith(".parquet"):
            raise InvalidDataset(f"member {name!r} is not a .parquet file")
        count, total = count + 1, total + size
        if count > _MAX_FILES or total > STREAM_LIMITS.max_total_bytes:
            raise InvalidDataset(f"the archive exceeds {_MAX_FILES} files or {STREAM_LIMITS.max_total_bytes} "
                                 "bytes")
        if cache_dir is None:
            yield stack.enter_context(opener()), name, _split_of(name)
            continue
        copy = cache_dir / f"{count}.parquet"
        with opener() as member, copy.open("wb") as out:
            shutil.copyfileobj(member, out, 1 << 20)  # ends at the member's declared size (zipfile, tarfile)
            copied = out.tell()
        if copied != size:
            raise InvalidDataset(f"{name} holds {copied} bytes but its header says {size}")
        yield copy, name, _split_of(name)


def _members(path: Path, kind: str, stack: contextlib.ExitStack) -> Iterator[tuple[str, int, Any]]:
    """Yields (name, size, opener) of a ZIP's or plain tar's regular files; refuses links and bombs. The
    archive stays open with `stack`, so members opened from it can be read after the walk."""
    if kind == "parquet.zip":
        try:
            zf = stack.enter_context(zipfile.ZipFile(path))
        except ZIP_OPEN_ERRORS as exc:
            raise InvalidDataset(f"the ZIP archive is corrupt ({exc})") from None
        for info in zf.infolist():
            if stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise InvalidDataset(f"{info.filename} is a link or special file")
            if info.file_size > STREAM_LIMITS.max_ratio * max(info.compress_size, 1):
                raise InvalidDataset(f"{info.filename} expands more than {STREAM_LIMITS.max_ratio:g} times: "
                                     "a zip bomb is refused")
            yield info.filename, info.file_size, lambda info=info: _zip_open(zf, info)
        return
    try:
        tf = stack.enter_context(tarfile.open(path, "r:"))  # noqa: SIM115  # closed by `stack`
        for member in tf:
            if member.isdir():
                continue
            if not member.isreg() or member.issparse():
                raise InvalidDataset(f"{member.name} is a link, device or special file")
            yield member.name, member.size, lambda member=member: _tar_open(tf, member)
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidDataset(f"the tar archive is truncated or corrupt ({exc})") from None


@contextlib.contextmanager
def _zip_open(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[IO[bytes]]:
    """Opens a ZIP member (seekable), mapping zipfile's failures."""
    try:
        with zf.open(info) as f:
            yield f
    except ZIP_READ_ERRORS as exc:
        raise InvalidDataset(f"{info.filename} cannot be read from the ZIP ({exc})") from None


@contextlib.contextmanager
def _tar_open(tf: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[IO[bytes]]:
    """Opens a plain tar member (seekable)."""
    f = tf.extractfile(member)
    if f is None:
        raise InvalidDataset(f"{member.name} cannot be read from the tar")
    with f:
        yield f
