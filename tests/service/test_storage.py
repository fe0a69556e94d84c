"""Object keys and the local store: atomic hashed writes, streamed reads, no path escapes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import Settings
from service.storage import ObjectNotFound, make_store, store_from_url
from service.storage.base import StorageError
from service.storage.keys import artifact_key, check_key, checkpoint_key, input_key, job_prefix
from service.storage.local import LocalStore

JOB = "6f1c2a40-8a4b-4b8e-9a39-0d7c3c1e2f10"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    """A local store in a temp folder."""
    return LocalStore(tmp_path / "objects")


def files_under(root: Path) -> list[Path]:
    """Every file below root, hidden temp files included."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_keys_are_derived_per_tenant_and_job() -> None:
    assert input_key("public", JOB, "model") == f"tenants/public/jobs/{JOB}/inputs/model"
    assert artifact_key("t1", JOB, "model.onnx.zst") == f"tenants/t1/jobs/{JOB}/artifacts/model.onnx.zst"
    assert checkpoint_key("public", JOB).startswith(job_prefix("public", JOB))
    with pytest.raises(ValueError, match="tenant"):
        job_prefix("../x", JOB)
    with pytest.raises(ValueError, match="invalid job id"):
        job_prefix("public", "../../etc")
    with pytest.raises(ValueError, match="artifact"):
        artifact_key("public", JOB, "../../x")
    with pytest.raises(ValueError, match="input kind"):
        input_key("public", JOB, "other")  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["", "../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", ".hidden", "a\\b",
                                 "a/b/", "x" * 2000])
def test_unsafe_keys_are_refused(store: LocalStore, key: str) -> None:
    with pytest.raises(ValueError, match="unsafe object key"):
        check_key(key)
    with pytest.raises(ValueError, match="unsafe object key"):
        store.put_stream(key, [b"x"])


def test_put_stream_hashes_and_round_trips(store: LocalStore, tmp_path: Path) -> None:
    chunks = [os.urandom(1000) for _ in range(50)]
    size, sha = store.put_stream("a/b/c", iter(chunks))
    data = b"".join(chunks)
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    assert store.exists("a/b/c")
    assert store.size("a/b/c") == len(data)
    assert b"".join(store.open_stream("a/b/c", chunk_size=333)) == data
    assert store.read_range("a/b/c", 10, 20) == data[10:30]
    store.get_to_file("a/b/c", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == data
    assert store.put_file("d", tmp_path / "copy") == (size, sha)
    assert store.presigned_get("a/b/c", 60) is None


def test_a_failed_write_leaves_nothing_and_keeps_the_old_object(store: LocalStore) -> None:
    store.put_stream("k", [b"old"])

    def failing() -> Iterator[bytes]:
        yield b"new data"
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        store.put_stream("k", failing())
    assert b"".join(store.open_stream("k")) == b"old"
    assert [p.name for p in files_under(store.root)] == ["k"]  # no temp file left
    with store.open_writer("never") as writer:
        writer.write(b"x")
        writer.abort()
    assert not store.exists("never")


def test_missing_objects_and_prefix_delete(store: LocalStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.open_stream("nope")
    with pytest.raises(ObjectNotFound):
        store.size("nope")
    store.delete("nope")  # deleting a missing object is fine
    prefix = job_prefix("public", JOB)
    for name in ("inputs/model", "artifacts/model.onnx"):
        store.put_stream(prefix + name, [b"x"])
    store.put_stream("tenants/public/jobs/other", [b"keep"])
    store.delete_prefix(prefix)
    assert [p.name for p in files_under(store.root)] == ["other"]
    with pytest.raises(ValueError, match="must end with"):
        store.delete_prefix("tenants/public")  # prefixes must name a folder


def test_symlinks_cannot_lead_out_of_the_root(store: LocalStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="escapes"):
        store.put_stream("link/file", [b"x"])
    assert list(outside.iterdir()) == []


def test_check_and_url_schemes(tmp_path: Path) -> None:
    store = make_store(Settings(data_dir=tmp_path))
    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "objects").resolve()
    store.check()
    store.root.rmdir()
    with pytest.raises(StorageError):
        store.check()
    with pytest.raises(ValueError, match="unsupported"):
        store_from_url("ftp://x/y")
    with pytest.raises(ValueError, match="bucket"):
        store_from_url("s3:///prefix")
