"""A stored object as a read-only, seekable file: every read is one ranged GET, so `zipfile` can list an
archive in the object store by fetching only its end records and central directory, never the members.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from service.storage.base import ObjectStore

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["ObjectFile", "ReadTooLarge"]


class ReadTooLarge(Exception):
    """One read asked for more than the file allows (an archive whose member list is too big)."""

    def __init__(self, wanted: int, limit: int) -> None:
        """Keeps how much was asked for and the limit."""
        super().__init__(f"a read of {wanted} bytes is over the limit of {limit}")
        self.wanted, self.limit = wanted, limit


class ObjectFile(io.RawIOBase):
    """Reads `key` of `size` bytes from `store` by ranges; one read may fetch at most `max_read` bytes."""

    def __init__(self, store: ObjectStore, key: str, size: int, *, max_read: int) -> None:
        """Opens the object at offset 0 (nothing is fetched until the first read)."""
        super().__init__()
        self._store, self._key, self._size, self._max_read = store, key, size, max_read
        self._pos = 0

    def readable(self) -> bool:
        """Tells io that this file reads."""
        return True

    def seekable(self) -> bool:
        """Tells io (and zipfile) that this file seeks."""
        return True

    def tell(self) -> int:
        """Returns the current offset."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Moves the offset (from the start, the current offset or the end); fetches nothing."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(f"seek to {base + offset}, before the start of the object")
        self._pos = base + offset
        return self._pos

    def read(self, size: int = -1) -> bytes:
        """Returns up to `size` bytes (all the rest when negative) from one ranged GET; b"" at the end.

        The limit is checked before anything is allocated or fetched: an archive may claim any size.
        """
        left = max(self._size - self._pos, 0)
        wanted = left if size < 0 else min(size, left)
        if wanted == 0:
            return b""
        if wanted > self._max_read:
            raise ReadTooLarge(wanted, self._max_read)
        data = self._store.read_range(self._key, self._pos, wanted)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        """Reads to the end in one GET (io's default would fetch it in 8 KiB pieces)."""
        return self.read()

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Fills `buffer` from the current offset (io's other read methods go through here)."""
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)
