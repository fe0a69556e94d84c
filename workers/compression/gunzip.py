"""A gzip file's decompressed bytes, inflated ahead on a second thread.

gzip has no random access, so a `.tar.gz` is read as one stream, and inflating it is a third of the work
of indexing it (1 GB of JPEGs: ~5 s of CPU with zlib, less with ISA-L). The inflate releases the GIL, so a
thread that inflates ahead runs on a second core beside the reader (tar headers, image headers): the index
is built in about the time of the slower of the two instead of their sum. Memory stays bounded: at most
`_QUEUED` chunks of at most `_CHUNK` decompressed bytes wait, whatever the compression ratio (a bomb is
stopped by the reader, archives._BoundedReader, which sees `consumed`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import zlib
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, cast

from isal import isal_zlib

__all__ = ["GunzipReader"]

_GZIP = 16 + zlib.MAX_WBITS  # zlib's wbits for a gzip header and trailer
# ISA-L's inflate (isal: zlib's API, faster); its type stub declares its error an instance, not a class.
_INFLATE_ERROR = cast("type[Exception]", isal_zlib.error)
_READ = 1 << 20  # compressed bytes read at a time
_CHUNK = 1 << 20  # decompressed bytes handed over at a time
_QUEUED = 8

_Item = tuple[bytes, int] | BaseException | None


class _Stopped(Exception):
    """The reader closed before the end of the stream; the thread ends quietly."""


class GunzipReader:
    """A read-only stream of a gzip file's decompressed bytes (every gzip member in turn, zero padding
    skipped as gzip does); `consumed` is how many compressed bytes produced what was read so far."""

    def __init__(self, path: Path) -> None:
        self.consumed = 0
        self._queue: queue.Queue[_Item] = queue.Queue(_QUEUED)
        self._stop = threading.Event()
        self._chunk, self._pos, self._done = b"", 0, False
        self._thread = threading.Thread(target=self._run, args=(path,), name="gunzip", daemon=True)
        self._thread.start()

    def __enter__(self) -> GunzipReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def read(self, size: int) -> bytes:
        """Returns up to `size` next bytes (fewer at a chunk's end), b"" at the end; raises what inflating
        raised (zlib.error for corrupt data, EOFError for a stream cut short, OSError)."""
        while self._pos >= len(self._chunk):
            if self._done:
                return b""
            item = self._queue.get()
            if item is None or isinstance(item, BaseException):
                self._done = True
                if item is None:
                    return b""
                raise item
            (self._chunk, self.consumed), self._pos = item, 0
        data = self._chunk[self._pos:self._pos + size]
        self._pos += len(data)
        return data

    def close(self) -> None:
        """Stops the thread (it may be waiting to hand over a chunk) and waits for it."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.1)
        self._thread.join()

    def _run(self, path: Path) -> None:
        """Inflates the file into the queue; ends with None, or the exception that stopped it."""
        with contextlib.suppress(_Stopped):
            try:
                with path.open("rb") as raw:
                    self._inflate(raw)
                self._put(None)
            except _INFLATE_ERROR as exc:  # corrupt data: the zlib error every archive reader handles
                self._put(zlib.error(str(exc)))
            except (OSError, EOFError) as exc:
                self._put(exc)

    def _inflate(self, raw: BinaryIO) -> None:
        """Inflates member after member, each output at most _CHUNK bytes long."""
        inflater, data, started = isal_zlib.decompressobj(_GZIP), b"", False
        while True:
            if not data:
                data = raw.read(_READ)
                if not data:
                    break
            if inflater.eof:  # another member follows, or zero padding
                if not data.strip(b"\0"):
                    data = b""
                    continue
                inflater = isal_zlib.decompressobj(_GZIP)
            started = True
            out = inflater.decompress(data, _CHUNK)
            data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
            if out:
                self._put((out, raw.tell() - len(data)))
        while not inflater.eof and (out := inflater.decompress(b"", _CHUNK)):  # output still held back
            self._put((out, raw.tell()))
        if not started or not inflater.eof:
            raise EOFError("the gzip stream is cut short")

    def _put(self, item: _Item) -> None:
        """Hands one item over, waiting while the queue is full; raises _Stopped once the reader closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                pass
        raise _Stopped
