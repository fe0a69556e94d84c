"""Objects as files under one root folder: atomic writes (temp file + os.replace), no path escapes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from service.storage.base import CHUNK, ObjectNotFound, ObjectStore, ObjectWriter, StorageError
from service.storage.keys import check_key

__all__ = ["LocalStore"]


class _LocalWriter(ObjectWriter):
    """Writes into a hidden temp file beside the target, renamed over it on commit."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        self._path, self._tmp = path, Path(tmp)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def _write(self, data: bytes) -> None:
        """Appends to the temp file."""
        assert self._file is not None, "write after commit or abort"
        self._file.write(data)

    def _commit(self) -> None:
        """Flushes to disk, then renames over the target (readers see the old or the new, never half)."""
        assert self._file is not None, "commit after commit or abort"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._tmp, self._path)

    def abort(self) -> None:
        """Closes and removes the temp file."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)


def _chunks(f: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    """Yields an open file's bytes and closes it at the end."""
    with f:
        yield from iter(lambda: f.read(chunk_size), b"")


class LocalStore(ObjectStore):
    """A local folder; keys map to paths below `root` and are checked so none can leave it."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        """Maps a key to its file, refusing keys (or symlinks) that would land outside the root."""
        path = self.root.joinpath(*check_key(key).split("/"))
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"object key {key!r} escapes the store")
        return path

    def _open(self, key: str) -> BinaryIO:
        """Opens an object for reading; ObjectNotFound when it is missing."""
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def open_writer(self, key: str) -> ObjectWriter:
        """Starts an atomic write of `key`."""
        return _LocalWriter(self._path(key))

    def open_stream(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Opens the file now (so a missing object raises here) and yields it in chunks."""
        return _chunks(self._open(key), chunk_size)

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Reads `length` bytes from `start`."""
        with self._open(key) as f:
            f.seek(start)
            return f.read(length)

    def size(self, key: str) -> int:
        """Returns the file's size."""
        try:
            return self._path(key).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        """Tells whether the file exists."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Removes the file if present."""
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        """Removes the folder that holds every object under `prefix`."""
        if not prefix.endswith("/"):
            raise ValueError(f"prefix {prefix!r} must end with '/'")
        shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)

    def check(self) -> None:
        """Raises StorageError unless the root is a writable folder."""
        if not (self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)):
            raise StorageError(f"storage folder {self.root} is missing or not writable")
