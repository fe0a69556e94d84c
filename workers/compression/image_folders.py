"""Image-folder archives as users have them, indexed once for random access: `train/<class>/<image>` and
optionally `val/<class>/<image>` (optionally inside one top folder) in a `.zip`, `.tar` or `.tar.gz`.

Every member passes the archive safety checks (archives.py: names, links, sizes, ratios, member count);
each image's header is probed (size, mode, EXIF orientation) and a file Pillow cannot read is skipped and
counted. Random access afterwards:
- ZIP: the standard library's zipfile by member name (its central directory is the index);
- tar: the data offset of every member, recorded while streaming it once; then seek + read;
- tar.gz: gzip has no random access, so while indexing, the decompressed stream is copied into a private
  on-disk cache (bounded by the archive limit on uncompressed bytes, deleted with the index) and read as a
  tar. The dataset check, which must not write, streams it without a cache (`cache=False`).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import weakref
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal

from workers.compression.archives import ArchiveLimits, Member, iter_members
from workers.compression.errors import InvalidDataset
from workers.compression.image_index import ImageIndex, IndexBuilder, Split
from workers.compression.images import IMAGE_SUFFIXES, Unreadable, probe

__all__ = ["STREAM_LIMITS", "ArchiveSource", "index_image_folder"]

Kind = Literal["zip", "tar", "tar.gz"]

# Streaming holds no image in memory for long, so the archive may be far larger than RAM and hold ImageNet's
# 1.3 M images (the index costs ~1 KB per image); the other limits (member size, compression ratio,
# pixels per image) stay those of archives.DEFAULT_LIMITS.
STREAM_LIMITS = ArchiveLimits(max_members=2_000_000, max_total_bytes=256 << 30)
_HEAD = 256 * 1024  # bytes read to probe a header: past the EXIF/ICC blocks of real photos
_SPLITS: dict[str, Split] = {"train": "train", "val": "val", "validation": "val"}


class ArchiveSource:
    """Reads one member's bytes by key: from a ZIP by name, from a tar (or the tar.gz cache) by offset."""

    def __init__(self, path: Path, zip_names: list[str] | None, spans: list[tuple[int, int]],
                 names: list[str]) -> None:
        self.path, self.zip_names, self.spans, self.names = path, zip_names, spans, names
        self._handle: zipfile.ZipFile | BinaryIO | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickles without the open handle: each DataLoader worker opens the file for itself."""
        return {**self.__dict__, "_handle": None}

    def read(self, key: int) -> bytes:
        """Returns member `key`'s bytes."""
        if self._handle is None:
            self._handle = zipfile.ZipFile(self.path) if self.zip_names is not None else self.path.open("rb")
        if isinstance(self._handle, zipfile.ZipFile):
            assert self.zip_names is not None
            return self._handle.read(self.zip_names[key])
        offset, size = self.spans[key]
        self._handle.seek(offset)
        return self._handle.read(size)

    def name(self, key: int) -> str:
        """Returns member `key`'s path in the archive."""
        return self.names[key]


def index_image_folder(path: Path, kind: Kind, *, seed: int, limits: ArchiveLimits = STREAM_LIMITS,
                       cache: bool = True) -> ImageIndex:
    """Indexes an image-folder archive (headers only); raises InvalidDataset for unsafe or unusable ones."""
    cache_dir = Path(tempfile.mkdtemp(prefix="secateur-tar-")) if cache and kind == "tar.gz" else None
    try:
        with (cache_dir / "data.tar").open("wb") if cache_dir else contextlib.nullcontext() as tee:
            source = ArchiveSource(cache_dir / "data.tar" if cache_dir else path,
                                   [] if kind == "zip" else None, [], [])
            builder = IndexBuilder(format=kind, source=source)
            # A tar streams every byte anyway, so only a ZIP member is read in part.
            head = _HEAD if kind == "zip" else None
            for member in iter_members(path, kind, limits, head=head, tee=tee):
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
    key = len(source.names)
    source.names.append(member.name)
    if source.zip_names is not None:
        source.zip_names.append(member.name)
    else:
        source.spans.append((member.offset, member.size))
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
    parts = PurePosixPath(name).parts
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    if len(parts) == 4 and parts[1] in _SPLITS:  # one wrapping folder, as zipping a directory makes
        parts = parts[1:]
    if len(parts) != 3 or parts[0] not in _SPLITS:
        raise InvalidDataset(f"member {name!r} does not fit the layout train/<class>/<image> or "
                             "val/<class>/<image> (optionally inside one top folder)")
    if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
        raise InvalidDataset(f"member {name!r} is not a .png, .jpg or .webp image")
    return _SPLITS[parts[0]], parts[1]
