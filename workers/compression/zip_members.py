"""A ZIP read without zipfile's member list: its central directory walked entry by entry, and any member
read later from the handful of integers its `Entry` holds.

zipfile keeps a ZipInfo object (~0.5 KB) per member for as long as the archive is open, in every process
that opens it; an image archive of a million members would keep half a gigabyte of them. Here an index
keeps only where each member's data starts, its two sizes, its CRC and its compression method, and any
process reads a member with one seek. Errors are `zipfile.BadZipFile` (the caller says whose input it is).
ZIP64 (archives over 4 GiB or 65,535 members) and data prepended to the archive are handled as zipfile
handles them; multi-disk archives and encrypted members are refused.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

__all__ = ["METHODS", "Entry", "data_offset", "entries", "member_count", "read_data", "read_head"]

METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_LOCATOR = struct.Struct("<4sLQL")  # ZIP64 end of central directory locator
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # ZIP64 end of central directory record
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # central directory file header
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # local file header
_MAX_COMMENT = 0xFFFF
_UTF8 = 0x800  # general purpose flag: the name is UTF-8 (else cp437)
_ZIP64_EXTRA = 0x0001


@dataclass(frozen=True, slots=True)
class Entry:
    """One central-directory entry: what the index needs to check a member and read it later."""

    name: str
    header: int  # offset of the local header in the file (prepended data already added)
    compressed: int
    size: int
    crc: int
    method: int
    flags: int
    mode: int  # the Unix mode in the external attributes (0 when written without one)


@dataclass(frozen=True)
class _Directory:
    """Where the central directory lies, how many entries it says it holds, and the prepended bytes."""

    offset: int
    size: int
    count: int
    concat: int


class _Decompressor(Protocol):
    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


def member_count(f: BinaryIO) -> int:
    """Returns the number of entries the end record declares (read before walking them)."""
    return _directory(f).count


def entries(f: BinaryIO) -> Iterator[Entry]:
    """Yields the central directory's entries in order, reading it through a small buffer (every entry
    its size holds: some writers wrap the end record's 16-bit count)."""
    where = _directory(f)
    f.seek(where.offset + where.concat)
    left = where.size
    while left > 0:
        head = _take(f, _CENTRAL.size, left)
        fields = _CENTRAL.unpack(head)
        if fields[0] != b"PK\x01\x02":
            raise zipfile.BadZipFile("bad central directory entry")
        flags, method, crc, compressed, size = fields[5], fields[6], fields[9], fields[10], fields[11]
        name_len, extra_len, comment_len, disk = fields[12], fields[13], fields[14], fields[15]
        external, header = fields[17], fields[18]
        tail = _take(f, name_len + extra_len + comment_len, left - len(head))
        left -= len(head) + len(tail)
        if disk not in (0, 0xFFFF):
            raise zipfile.BadZipFile("multi-disk archives are not supported")
        name = tail[:name_len].decode("utf-8" if flags & _UTF8 else "cp437", "replace")
        size, compressed, header = _zip64(tail[name_len:name_len + extra_len], size, compressed, header)
        yield Entry(name, header + where.concat, compressed, size, crc, method, flags, external >> 16)


def data_offset(f: BinaryIO, entry: Entry) -> int:
    """Returns where `entry`'s data starts, after checking its local header against the central one."""
    f.seek(entry.header)
    head = f.read(_LOCAL.size)
    if len(head) != _LOCAL.size:
        raise zipfile.BadZipFile(f"{entry.name}: the local header is cut short")
    fields = _LOCAL.unpack(head)
    if fields[0] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"{entry.name}: bad local header")
    name_len, extra_len = int(fields[10]), int(fields[11])
    name = f.read(name_len)
    if name.decode("utf-8" if fields[3] & _UTF8 else "cp437", "replace") != entry.name:
        raise zipfile.BadZipFile(f"{entry.name}: the local header names another file")
    return entry.header + _LOCAL.size + name_len + extra_len


def read_head(f: BinaryIO, start: int, compressed: int, method: int, head: int) -> bytes:
    """Returns the first `head` bytes of a member whose data starts at `start` (nothing is checked against
    the CRC). A compressed member is read whole but inflated only that far: bzip2 yields nothing before
    the end of a 900 KB block, so a prefix of its stored bytes would often give no bytes at all."""
    f.seek(start)
    return _decompress(method, f.read(min(compressed, head) if method == zipfile.ZIP_STORED else compressed),
                       head)


def read_data(f: BinaryIO, start: int, compressed: int, size: int, method: int, crc: int) -> bytes:
    """Returns a member's bytes after checking their length and CRC; raises BadZipFile."""
    f.seek(start)
    data = f.read(compressed)
    if len(data) != compressed:
        raise zipfile.BadZipFile("the member's data is cut short")
    data = _decompress(method, data, size + 1)
    if len(data) != size or zlib.crc32(data) != crc:
        raise zipfile.BadZipFile("the member's data does not match its size or CRC")
    return data


def _decompress(method: int, data: bytes, limit: int) -> bytes:
    """Decompresses `data` to at most `limit` bytes; maps every codec's error to BadZipFile."""
    decompressor: _Decompressor
    if method == zipfile.ZIP_STORED:
        return data[:limit]
    if method == zipfile.ZIP_DEFLATED:
        decompressor = zlib.decompressobj(-15)
    elif method == zipfile.ZIP_BZIP2:
        decompressor = bz2.BZ2Decompressor()
    elif method == zipfile.ZIP_LZMA:
        decompressor, data = _lzma(data)
    else:
        raise zipfile.BadZipFile(f"compression method {method} is not supported")
    try:
        return decompressor.decompress(data, limit)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise zipfile.BadZipFile(f"the member's data is corrupt ({exc})") from None


def _lzma(data: bytes) -> tuple[_Decompressor, bytes]:
    """Returns a raw LZMA1 decompressor from a ZIP LZMA member's properties header, and the data after it."""
    if len(data) < 9:
        raise zipfile.BadZipFile("the LZMA member has no properties header")
    props_end = 4 + int.from_bytes(data[2:4], "little")
    props = data[4:props_end]
    if len(props) != 5 or props[0] >= 9 * 5 * 5:
        raise zipfile.BadZipFile("the LZMA member's properties are malformed")
    lzma1 = {"id": lzma.FILTER_LZMA1, "lc": props[0] % 9, "lp": props[0] // 9 % 5, "pb": props[0] // 45,
             "dict_size": int.from_bytes(props[1:5], "little")}
    try:
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma1]), data[props_end:]
    except (lzma.LZMAError, ValueError) as exc:
        raise zipfile.BadZipFile(f"the LZMA member's properties are malformed ({exc})") from None


def _directory(f: BinaryIO) -> _Directory:
    """Finds the end record (after any comment) and, where present, its ZIP64 twin."""
    end = f.seek(0, 2)
    tail_start = max(0, end - _EOCD.size - _MAX_COMMENT)
    f.seek(tail_start)
    tail = f.read()
    at = _end_record(tail)
    fields = _EOCD.unpack(tail[at:at + _EOCD.size])
    disk, disk_cd, count, size, offset = fields[1], fields[2], fields[4], fields[5], fields[6]
    location = tail_start + at
    if location >= _LOCATOR.size + _EOCD64.size:
        f.seek(location - _LOCATOR.size)
        locator = _LOCATOR.unpack(f.read(_LOCATOR.size))
        if locator[0] == b"PK\x06\x07":
            if locator[3] > 1:
                raise zipfile.BadZipFile("multi-disk archives are not supported")
            location -= _LOCATOR.size + _EOCD64.size
            f.seek(location)
            record = _EOCD64.unpack(f.read(_EOCD64.size))
            if record[0] != b"PK\x06\x06":
                raise zipfile.BadZipFile("the ZIP64 end record is missing")
            disk, disk_cd, count, size, offset = record[4], record[5], record[7], record[8], record[9]
    if disk or disk_cd:
        raise zipfile.BadZipFile("multi-disk archives are not supported")
    concat = location - size - offset
    if concat < 0:
        raise zipfile.BadZipFile("the central directory lies outside the file")
    return _Directory(offset, size, count, concat)


def _end_record(tail: bytes) -> int:
    """Returns where the end record starts in the file's last bytes: the last signature whose comment
    length reaches exactly the end (a comment may hold the signature too), else the last signature."""
    found, end = -1, max(0, len(tail) - _EOCD.size + 4)
    while (at := tail.rfind(b"PK\x05\x06", 0, end)) >= 0:
        found = at if found < 0 else found
        if at + _EOCD.size + int.from_bytes(tail[at + 20:at + 22], "little") == len(tail):
            return at
        end = at + 3
    if found < 0:
        raise zipfile.BadZipFile("File is not a zip file")
    return found


def _take(f: BinaryIO, n: int, left: int) -> bytes:
    """Reads exactly `n` bytes of the central directory, which has `left` bytes left; raises BadZipFile."""
    data = f.read(n) if n <= left else b""
    if len(data) != n:
        raise zipfile.BadZipFile("the central directory is cut short")
    return data


def _zip64(extra: bytes, size: int, compressed: int, header: int) -> tuple[int, int, int]:
    """Replaces the 32-bit fields saturated at 0xFFFFFFFF with their ZIP64 extra-field values."""
    wanted = [v == 0xFFFFFFFF for v in (size, compressed, header)]
    if not any(wanted):
        return size, compressed, header
    values = [size, compressed, header]
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, at)
        if tag == _ZIP64_EXTRA:
            body, i = extra[at + 4:at + 4 + length], 0
            for j, need in enumerate(wanted):
                if need:
                    if i + 8 > len(body):
                        raise zipfile.BadZipFile("the ZIP64 extra field is cut short")
                    values[j] = struct.unpack_from("<Q", body, i)[0]
                    i += 8
            return values[0], values[1], values[2]
        at += 4 + length
    raise zipfile.BadZipFile("a ZIP64 size or offset has no ZIP64 extra field")
