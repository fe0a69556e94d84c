"""The object-store interface: streamed writes that hash as they go, streamed reads, prefix deletes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

__all__ = ["CHUNK", "ObjectNotFound", "ObjectStore", "ObjectWriter", "StorageError"]

CHUNK = 1024 * 1024  # read/write granularity: big enough for throughput, small enough for memory


class StorageError(Exception):
    """The object store failed or is unreachable."""


class ObjectNotFound(StorageError):
    """No object has this key."""


class ObjectWriter(ABC):
    """One object being written: bytes go in with `write`, appear at once on `commit`, vanish on `abort`."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> None:
        """Appends bytes to the object and to its running size and sha256."""
        self._hash.update(data)
        self._size += len(data)
        self._write(data)

    def commit(self) -> tuple[int, str]:
        """Makes the object visible under its key; returns its (size, sha256 hex)."""
        self._commit()
        return self._size, self._hash.hexdigest()

    @abstractmethod
    def _write(self, data: bytes) -> None:
        """Stores the next bytes (backend-specific)."""

    @abstractmethod
    def _commit(self) -> None:
        """Publishes what was written (backend-specific)."""

    @abstractmethod
    def abort(self) -> None:
        """Discards what was written; nothing is left behind. Safe to call twice."""

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Aborts when the block raised (a writer that was not committed leaves nothing)."""
        if exc is not None:
            self.abort()


class ObjectStore(ABC):
    """A flat key → bytes store (local folder or S3); keys come from `service.storage.keys`."""

    @abstractmethod
    def open_writer(self, key: str) -> ObjectWriter:
        """Starts writing the object `key` (replaced atomically on commit)."""

    @abstractmethod
    def open_stream(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Returns the object's bytes in chunks; raises ObjectNotFound before yielding if it is missing."""

    @abstractmethod
    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Returns up to `length` bytes of the object from offset `start`."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Returns the object's size in bytes; raises ObjectNotFound."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Tells whether the object exists."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Deletes the object; a missing object is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Deletes every object under a folder prefix (which must end with "/")."""

    @abstractmethod
    def check(self) -> None:
        """Raises StorageError unless the store is reachable and writable (readiness probe)."""

    def presigned_get(self, key: str, expires_s: int) -> str | None:
        """Returns a short-lived GET URL for the object, or None when the backend has none (local)."""
        return None

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        """Writes the chunks as one object; returns its (size, sha256). Nothing is left if a chunk raises."""
        with self.open_writer(key) as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()

    def put_file(self, key: str, path: Path) -> tuple[int, str]:
        """Uploads a local file; returns its (size, sha256)."""
        with path.open("rb") as f:
            return self.put_stream(key, iter(lambda: f.read(CHUNK), b""))

    def get_to_file(self, key: str, path: Path) -> None:
        """Downloads the object to `path`, atomically (a temp file in the same folder, then rename)."""
        chunks = self.open_stream(key)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
