"""Image-folder archives as users have them, indexed once for random access: `train/<class>/<image>` and
optionally `val/<class>/<image>` (optionally inside one top folder) in a `.zip`, `.tar` or `.tar.gz`.

Every member passes the archive safety checks (archives.py: names, links, sizes, ratios, member count);
each image's header is probed (size, mode, EXIF orientation) and a file Pillow cannot read is skipped and
counted. Random access afterwards, by where each member's data starts:
- ZIP: the data offset, stored and compressed sizes, method and CRC of every member (zip_members.py);
- tar: the data offset and size of every member, recorded while streaming it once; then seek + read;
- tar.gz: gzip has no random access, so while indexing, the decompressed stream is copied into a private
  on-disk cache (bounded by the archive limit on uncompressed bytes, deleted with the index) and read as a
  tar. The dataset check, which must not write, streams it without a cache (`cache=False`).
The source keeps these as packed arrays plus one blob of names: 29 bytes per image plus its path's
UTF-8 bytes (ImageNet's `train/n01440764/n01440764_10026.JPEG`: 37), in every process that reads it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import weakref
import zipfile
from array import array
from pathlib import Path
from typing import Any, BinaryIO, Literal

from workers.compression import zip_members
from workers.compression.archives import ArchiveLimits, Member, iter_members, member_parts, suffix
from workers.compression.errors import InvalidDataset
from workers.compression.image_index import ImageIndex, IndexBuilder, Split
from workers.compression.images import IMAGE_SUFFIXES, Unreadable, probe

__all__ = ["STREAM_LIMITS", "ArchiveSource", "index_image_folder"]

Kind = Literal["zip", "tar", "tar.gz"]

# Streaming holds no image in memory for long, so the archive may be far larger than RAM and hold ImageNet's
# 1.3 M images; the other limits (member size, compression ratio, pixels per image) stay those of
# archives.DEFAULT_LIMITS.
STREAM_LIMITS = ArchiveLimits(max_members=2_000_000, max_total_bytes=256 << 30)
_HEAD = 256 * 1024  # bytes read to probe a header: past the EXIF/ICC blocks of real photos
_SPLITS: dict[str, Split] = {"train": "train", "val": "val", "validation": "val"}


class ArchiveSource:
    """Reads one member's bytes by key from where its data starts (a ZIP member inflated and its CRC
    checked); keeps per member only packed integers and its name's bytes."""

    def __init__(self, path: Path, *, zipped: bool) -> None:
        self.path, self.zipped = path, zipped
        self.offsets = array("q")  # where each member's data starts
        self.sizes = array("I")  # its bytes (at most ArchiveLimits.max_member_bytes)
        self.stored = array("I")  # its compressed bytes (ZIP only)
        self.crcs = array("I")  # (ZIP only)
        self.methods = array("B")  # (ZIP only)
        self.names = bytearray()  # every member's UTF-8 path, back to back
        self.name_ends = array("q")
        self._handle: BinaryIO | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickles without the open handle: each DataLoader worker opens the file for itself."""
        return {**self.__dict__, "_handle": None}

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def nbytes(self) -> int:
        """Returns the bytes its packed arrays hold (what the index costs beyond the sample lists)."""
        columns = (self.offsets, self.sizes, self.stored, self.crcs, self.methods, self.name_ends)
        return sum(column.itemsize * len(column) for column in columns) + len(self.names)

    def add(self, member: Member) -> int:
        """Records where `member` lies; returns its key."""
        self.offsets.append(member.offset)
        self.sizes.append(member.size)
        if self.zipped:
            self.stored.append(member.compressed)
            self.crcs.append(member.crc)
            self.methods.append(member.method)
        self.names += member.name.encode("utf-8", "surrogateescape")
        self.name_ends.append(len(self.names))
        return len(self.offsets) - 1

    def read(self, key: int) -> bytes:
        """Returns member `key`'s bytes; raises Unreadable when a ZIP member's data is corrupt."""
        if self._handle is None:
            self._handle = self.path.open("rb")
        if not self.zipped:
            self._handle.seek(self.offsets[key])
            return self._handle.read(self.sizes[key])
        try:
            return zip_members.read_data(self._handle, self.offsets[key], self.stored[key], self.sizes[key],
                                         self.methods[key], self.crcs[key])
        except zipfile.BadZipFile as exc:
            raise Unreadable(str(exc)) from None

    def name(self, key: int) -> str:
        """Returns member `key`'s path in the archive."""
        start = self.name_ends[key - 1] if key else 0
        return self.names[start:self.name_ends[key]].decode("utf-8", "surrogateescape")


def index_image_folder(path: Path, kind: Kind, *, seed: int, limits: ArchiveLimits = STREAM_LIMITS,
                       cache: bool = True) -> ImageIndex:
    """Indexes an image-folder archive (headers only); raises InvalidDataset for unsafe or unusable ones."""
    cache_dir = Path(tempfile.mkdtemp(prefix="secateur-tar-")) if cache and kind == "tar.gz" else None
    try:
        with (cache_dir / "data.tar").open("wb") if cache_dir else contextlib.nullcontext() as tee:
            source = ArchiveSource(cache_dir / "data.tar" if cache_dir else path, zipped=kind == "zip")
            builder = IndexBuilder(format=kind, source=source)
            # A tar streams every byte anyway, so only a ZIP member is read in part.
            head = _HEAD if kind == "zip" else None
            # Closed on a refusal too: a .tar.gz's inflating thread stops then, not when the traceback goes.
            with contextlib.closing(iter_members(path, kind, limits, head=head, tee=tee)) as members:
                for member in members:
                    _add(builder, source, member, limits)
        index = builder.finish(seed=seed)
    except BaseException:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)
        raise
    if cache_dir is not None:
        weakref.finalize(source, shutil.rmtree, cache_dir, True)  # the cache lives as long as the index
    return index


def _add(builder: IndexBuilder, source: ArchiveSource, member: Member, limits: ArchiveLimits) -> None:
    """Places one member in the layout and records it: an image with its header, or an unreadable file."""
    place = _place(member.name)
    if place is None:
        return
    key = source.add(member)
    try:
        facts = probe(member.name, member.data, member.size, limits.max_image_pixels)
    except Unreadable:
        if len(member.data) == member.size:
            builder.skip(member.name)
            return
        # A ZIP image whose header lies past the probed head (a huge EXIF block): read it whole once.
        try:
            facts = probe(member.name, source.read(key), member.size, limits.max_image_pixels)
        except Unreadable:
            builder.skip(member.name)
            return
    builder.add(place[0], place[1], key, facts)


def _place(name: str) -> tuple[Split, str] | None:
    """Returns (split, class) of an image member, None for clutter; refuses members outside the layout."""
    parts = all_parts = member_parts(name)
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    if len(parts) == 4 and parts[1] in _SPLITS:  # one wrapping folder, as zipping a directory makes
        parts = parts[1:]
    if len(parts) != 3 or parts[0] not in _SPLITS:
        raise InvalidDataset(f"member {name!r} does not fit the layout train/<class>/<image> or "
                             "val/<class>/<image> (optionally inside one top folder)")
    if suffix(all_parts) not in IMAGE_SUFFIXES:
        raise InvalidDataset(f"member {name!r} is not a .png, .jpg or .webp image")
    return _SPLITS[parts[0]], parts[1]
