"""Archives (`.zip`, `.tar`, `.tar.gz`) read member by member as untrusted data.

Nothing is ever extracted to disk: each member is checked (name, type, size, compression ratio) before its
bytes are read into memory. A ZIP is walked through its central directory (zip_members.py), a tar streamed
once, and neither keeps a per-member object once the member has been handed on: an archive of a million
members costs what its caller keeps of each, nothing more.
"""

from __future__ import annotations

import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from workers.compression import zip_members
from workers.compression.errors import InvalidDataset, UserError
from workers.compression.gunzip import GunzipReader
from workers.compression.zip_errors import ZIP_OPEN_ERRORS

__all__ = ["DEFAULT_LIMITS", "ArchiveLimits", "Member", "check_member_name", "iter_members", "member_parts",
           "suffix"]

_ARCHIVE_SUFFIXES = frozenset({".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".npz"})
_RATIO_FLOOR = 1 << 20  # below this many bytes a stream's compression ratio is not judged yet
_DEFLATE_SLACK = 1.01  # stored data deflated or bzip2'ed grows by well under 1%


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what one archive may make the worker read and decode."""

    max_members: int = 500_000
    max_member_bytes: int = 32 << 20  # one stored file
    max_total_bytes: int = 4 << 30  # all stored files, uncompressed
    max_ratio: float = 200.0  # uncompressed / compressed, per ZIP member and over a .tar.gz stream
    max_image_pixels: int = 4096 * 4096  # one decoded image


DEFAULT_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class Member:
    """One regular file of an archive: its name, its bytes (maybe only the first), and where to read it
    again: `offset` is where its data starts in the file (ZIP) or in the decompressed tar stream."""

    name: str
    data: bytes
    offset: int
    size: int  # the whole member's bytes, even when `data` holds only its head
    compressed: int  # its stored bytes (= size in a tar)
    method: int = zipfile.ZIP_STORED  # ZIP compression method
    crc: int = 0  # ZIP CRC-32 of the data (a tar has none)


def iter_members(path: Path, kind: Literal["zip", "tar", "tar.gz"], limits: ArchiveLimits = DEFAULT_LIMITS,
                 *, head: int | None = None, tee: BinaryIO | None = None) -> Generator[Member, None, None]:
    """Yields every regular file after checking its name, type and sizes; `head` reads only that many first
    bytes of each; `tee` receives the whole decompressed tar stream (an on-disk copy to seek in later)."""
    if kind == "zip":
        return _zip_members(path, limits, head)
    return _tar_members(path, kind == "tar.gz", limits, head, tee)


def _zip_members(path: Path, limits: ArchiveLimits, head: int | None) -> Generator[Member, None, None]:
    """Yields the members of a ZIP's regular files after checking each entry's name, type and sizes."""
    with path.open("rb") as f:
        try:
            declared = zip_members.member_count(f)
        except ZIP_OPEN_ERRORS as exc:
            raise InvalidDataset(f"the ZIP archive is corrupt ({exc})") from None
        if declared > limits.max_members:
            raise InvalidDataset(f"the archive has {declared} members; the limit is {limits.max_members}")
        count = total = 0
        try:
            for entry in zip_members.entries(f):
                count += 1
                if count > limits.max_members:
                    raise InvalidDataset(f"the archive has more than {limits.max_members} members")
                if _zip_checked(entry, limits):
                    total += entry.size
                    _check_size(entry.name, entry.size, total, limits)
                    here = f.tell()  # the next central-directory entry
                    start = zip_members.data_offset(f, entry)
                    data = zip_members.read_head(f, start, entry.compressed, entry.method,
                                                 min(head or entry.size, entry.size))
                    yield Member(entry.name, data, start, entry.size, entry.compressed, entry.method,
                                 entry.crc)
                    f.seek(here)
        except ZIP_OPEN_ERRORS as exc:
            raise InvalidDataset(f"the ZIP archive is corrupt ({exc})") from None


def _zip_checked(entry: zip_members.Entry, limits: ArchiveLimits) -> bool:
    """Checks one ZIP entry's name, type, encryption, method and sizes; False for a directory."""
    check_member_name(entry.name)
    kind = stat.S_IFMT(entry.mode)  # Unix file type; 0 when written without one
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InvalidDataset(f"{entry.name} is a link or special file; only plain files are allowed")
    if entry.name.endswith("/"):
        return False
    if entry.flags & 0x1:
        raise InvalidDataset(f"{entry.name} is encrypted")
    if entry.method not in zip_members.METHODS:
        raise InvalidDataset(f"{entry.name} uses ZIP compression method {entry.method}; use stored, "
                             "deflate, bzip2 or lzma")
    if entry.size > limits.max_ratio * max(entry.compressed, 1):
        raise InvalidDataset(f"{entry.name} expands to {entry.size} bytes from {entry.compressed}, more "
                             f"than {limits.max_ratio:g} times: a zip bomb is refused")
    if entry.compressed > _DEFLATE_SLACK * limits.max_member_bytes + 1024:
        raise InvalidDataset(f"{entry.name} has {entry.compressed} stored bytes; one file may have at most "
                             f"{limits.max_member_bytes}")
    return True


def _tar_members(path: Path, gz: bool, limits: ArchiveLimits, head: int | None, tee: BinaryIO | None,
                 ) -> Generator[Member, None, None]:
    """Yields a tar's regular files, streaming it once through a bounded reader (a .tar.gz inflated ahead
    on a second thread)."""
    with path.open("rb") if not gz else GunzipReader(path) as source:
        consumed = (lambda: source.consumed) if isinstance(source, GunzipReader) else source.tell
        # Headers (even PAX ones) are read through the bound too, not only the members we look at.
        bounded = _BoundedReader(source, consumed, limits, tee)
        count = total = 0
        try:
            with tarfile.open(fileobj=bounded, mode="r|") as tf:  # type: ignore[call-overload]
                while (member := tf.next()) is not None:
                    tf.members.clear()  # tarfile keeps every TarInfo (~0.5 KB each); nothing here reads them
                    count += 1
                    if count > limits.max_members:
                        raise InvalidDataset(f"the archive has more than {limits.max_members} members")
                    check_member_name(member.name)
                    if member.isdir():
                        continue
                    if not member.isreg() or member.issparse():
                        raise InvalidDataset(f"{member.name} is a link, device or special file; only plain "
                                             "files are allowed")
                    total += member.size
                    _check_size(member.name, member.size, total, limits)
                    f = tf.extractfile(member)
                    data = f.read(min(head or member.size, member.size)) if f is not None else b""
                    yield Member(member.name, data, member.offset_data, member.size, member.size)
        except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
            raise InvalidDataset(f"the tar archive is truncated or corrupt ({exc})") from None


class _BoundedReader:
    """A read-only stream that stops a decompression bomb: caps bytes produced and their ratio to input."""

    def __init__(self, source: BinaryIO | GunzipReader, consumed: Callable[[], int], limits: ArchiveLimits,
                 tee: BinaryIO | None = None) -> None:
        self.source, self.consumed, self.limits, self.tee = source, consumed, limits, tee
        self.produced = 0

    def read(self, size: int = -1) -> bytes:
        """Reads like the wrapped stream, raising InvalidDataset once the bounds are passed."""
        data = self.source.read(size)
        self.produced += len(data)
        # Tar adds a 512-byte header per member and pads files to 512 bytes: allow for that overhead.
        if self.produced > self.limits.max_total_bytes + 1024 * self.limits.max_members:
            raise InvalidDataset(f"the archive expands beyond {self.limits.max_total_bytes} bytes")
        consumed = max(self.consumed(), 1)
        if self.produced > _RATIO_FLOOR and self.produced > self.limits.max_ratio * consumed:
            raise InvalidDataset(f"the archive expands more than {self.limits.max_ratio:g} times its "
                                 "compressed size: a decompression bomb is refused")
        if self.tee is not None:
            self.tee.write(data)
        return data


def check_member_name(name: str, error: type[UserError] = InvalidDataset) -> None:
    """Refuses absolute paths, `..`, backslashes and nested archives (as `error`: the input's own type)."""
    parts = member_parts(name)
    if name.startswith("/") or "\\" in name or (parts and parts[0].endswith(":")):
        raise error(f"member {name!r} has an absolute or non-POSIX path")
    if ".." in parts:
        raise error(f"member {name!r} points outside the archive (..)")
    if suffix(parts) in _ARCHIVE_SUFFIXES:
        raise error(f"member {name!r} is a nested archive; put the files in the archive directly")


def member_parts(name: str) -> list[str]:
    """Returns a member path's parts as PurePosixPath gives them (no empty or "." parts), without pathlib:
    it interns every part, which keeps a table the size of the archive's file names."""
    return [part for part in name.split("/") if part not in ("", ".")]


def suffix(parts: list[str]) -> str:
    """Returns the lower-cased suffix of a path's last part ("" for none, or a dot file)."""
    return posixpath.splitext(parts[-1])[1].lower() if parts else ""


def _check_size(name: str, size: int, total: int, limits: ArchiveLimits) -> None:
    """Refuses a member over the per-file limit, or a running total over the archive limit."""
    if size > limits.max_member_bytes:
        raise InvalidDataset(f"{name} has {size} bytes; one file may have at most {limits.max_member_bytes}")
    if total > limits.max_total_bytes:
        raise InvalidDataset(f"the archive's files exceed {limits.max_total_bytes} bytes uncompressed")
