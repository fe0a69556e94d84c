"""A stored ZIP dataset is classified by `zipfile` over ranged reads: only its end records and member list
are fetched, ZIP64 and comments work, and a member list over the limit is refused before it is fetched.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest

from service.jobs.inputs import sniff_zip_dataset
from service.jobs.object_file import ObjectFile, ReadTooLarge
from service.storage.local import LocalStore
from tests.service.conftest import npz_dataset, zip_bytes
from workers.compression.errors import InvalidDataset

KEY = "t/j/inputs/dataset"
LIMIT = 1 << 20


class CountingStore(LocalStore):
    """A local store that records every ranged read as (start, length)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[tuple[int, int]] = []

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Records the range, then reads it."""
        self.reads.append((start, length))
        return super().read_range(key, start, length)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    """An empty counting store."""
    return CountingStore(tmp_path / "objects")


def sniff(store: CountingStore, data: bytes, limit: int = LIMIT) -> str:
    """Stores `data` as the dataset and classifies it from the store."""
    store.put_stream(KEY, [data])
    return sniff_zip_dataset(store, KEY, len(data), max_directory=limit)


def test_only_the_end_and_the_member_list_are_fetched(store: CountingStore) -> None:
    image = b"\x89PNG" + bytes(4 << 20)  # 4 MiB of member data that must never be read
    data = zip_bytes({"train/cat/0.png": image, "val/cat/0.png": image})
    assert sniff(store, data) == "zip"
    assert sum(length for _, length in store.reads) < 1024
    assert all(start > 8 << 20 for start, _ in store.reads)  # all behind both members


@pytest.mark.parametrize(("members", "kind"), [
    ({"x_train.npy": b"x", "y_train.npy": b"y"}, "npz"),
    ({"train/a/0.png": b"p", "val/a/0.png": b"p"}, "zip"),
])
def test_member_names_decide_the_kind(store: CountingStore, members: dict[str, bytes], kind: str) -> None:
    assert sniff(store, zip_bytes(members)) == kind


def test_a_real_npz_and_a_pickle_behind_an_npz_looking_first_member(store: CountingStore) -> None:
    assert sniff(store, npz_dataset()) == "npz"
    hidden = zip_bytes({"x_train.npy": b"x", "archive/data.pkl": pickle.dumps(1), "archive/version": b"3"})
    with pytest.raises(InvalidDataset):
        sniff(store, hidden)


def test_zip64_and_a_long_comment_are_read(store: CountingStore, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    with monkeypatch.context() as patch:
        patch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 1)  # two members are "too many": ZIP64 end records
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("train/a/0.png", b"p")
            zf.writestr("val/a/0.png", b"p")
            zf.comment = b"c" * 0xFFFF  # the longest comment: the end record is 64 KiB before the end
    data = buf.getvalue()
    assert b"PK\x06\x06" in data  # a ZIP64 end of central directory record
    assert sniff(store, data) == "zip"


def test_a_member_list_over_the_limit_is_refused_unfetched(store: CountingStore) -> None:
    data = zip_bytes({f"train/a/{i:05d}.png": b"" for i in range(3000)})  # a ~170 KB member list
    with pytest.raises(InvalidDataset, match="too many files"):
        sniff(store, data, limit=100_000)
    assert max(length for _, length in store.reads) <= 22 + (1 << 16)


@pytest.mark.parametrize("data", [npz_dataset()[:-30], b"PK\x03\x04" + bytes(100), b"PK\x05\x06"])
def test_a_cut_or_corrupt_archive_is_invalid(store: CountingStore, data: bytes) -> None:
    with pytest.raises(InvalidDataset, match="truncated or corrupt"):
        sniff(store, data)


def test_object_file_seeks_and_reads_like_a_file(store: CountingStore) -> None:
    store.put_stream(KEY, [b"0123456789"])
    f = ObjectFile(store, KEY, 10, max_read=4)
    assert (f.seek(-3, io.SEEK_END), f.read()) == (7, b"789")
    assert f.read(5) == b""
    f.seek(2)
    assert (f.read(3), f.tell()) == (b"234", 5)
    assert f.seek(1, io.SEEK_CUR) == 6
    f.seek(0)
    with pytest.raises(ReadTooLarge):
        f.read()  # 10 bytes in one read: over the limit, and nothing fetched for it
    with pytest.raises(OSError, match="before the start"):
        f.seek(-11, io.SEEK_END)
    assert store.reads == [(7, 3), (2, 3)]
