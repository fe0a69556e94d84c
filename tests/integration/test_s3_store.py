"""The S3 store against a real S3 server (SeaweedFS): multipart streams, ranges, presigned GETs, deletes."""

from __future__ import annotations

import hashlib
import os
import secrets
from typing import Any

import httpx
import pytest

from service.storage import ObjectNotFound, StorageError, store_from_url
from service.storage.base import ObjectStore
from service.storage.s3 import PART_SIZE

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_store(s3_settings: Any) -> ObjectStore:
    """A store under a fresh prefix of the test bucket."""
    prefix = f"test-{secrets.token_hex(4)}"
    return store_from_url(f"s3://{s3_settings.bucket}/{prefix}", endpoint_url=s3_settings.endpoint_url)


def test_small_and_multipart_objects_round_trip(s3_store: ObjectStore) -> None:
    small = b"hello"
    assert s3_store.put_stream("a/small", [small]) == (5, hashlib.sha256(small).hexdigest())
    big = os.urandom(PART_SIZE + 123_457)  # two parts, the last one short
    size, sha = s3_store.put_stream("a/big", (big[i:i + 1_000_000] for i in range(0, len(big), 1_000_000)))
    assert (size, sha) == (len(big), hashlib.sha256(big).hexdigest())
    assert s3_store.size("a/big") == len(big)
    assert b"".join(s3_store.open_stream("a/big")) == big
    assert s3_store.read_range("a/big", PART_SIZE - 5, 10) == big[PART_SIZE - 5:PART_SIZE + 5]


def test_an_aborted_multipart_upload_leaves_no_object(s3_store: ObjectStore) -> None:
    writer = s3_store.open_writer("a/aborted")
    writer.write(os.urandom(PART_SIZE + 1))  # the first part is already uploaded
    writer.abort()
    assert not s3_store.exists("a/aborted")


def test_presigned_get_serves_the_object_and_expires_only_later(s3_store: ObjectStore) -> None:
    s3_store.put_stream("x/model.onnx", [b"onnx bytes"])
    url = s3_store.presigned_get("x/model.onnx", 60)
    assert url is not None
    assert "X-Amz-Expires=60" in url
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"onnx bytes"


def test_missing_objects_prefix_delete_and_readiness(s3_store: ObjectStore, s3_settings: Any) -> None:
    with pytest.raises(ObjectNotFound):
        s3_store.open_stream("nope")
    assert not s3_store.exists("nope")
    for key in ("job/a", "job/b/c", "jobx/keep"):
        s3_store.put_stream(key, [b"1"])
    s3_store.delete_prefix("job/")
    assert not s3_store.exists("job/a")
    assert not s3_store.exists("job/b/c")
    assert s3_store.exists("jobx/keep")
    s3_store.check()
    bucket = f"no-such-bucket-{secrets.token_hex(4)}"
    missing = store_from_url(f"s3://{bucket}", endpoint_url=s3_settings.endpoint_url)
    with pytest.raises(StorageError):
        missing.check()
