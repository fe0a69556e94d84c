"""The S3 store's file-level operations against SeaweedFS (streams, multipart and prefix deletes are covered
in test_s3_store.py): upload a file, download it atomically, delete it, and a stale presigned link 404s."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import httpx
import pytest

from service.storage import ObjectNotFound, store_from_url
from tests.integration.conftest import S3Server

pytestmark = pytest.mark.integration


def test_file_round_trip_delete_and_presigned_link(s3_settings: S3Server, tmp_path: Path) -> None:
    """put_file → get_to_file gives the same bytes; after delete, the object and its link are gone."""
    store = store_from_url(f"s3://{s3_settings.bucket}/files-{secrets.token_hex(4)}",
                           endpoint_url=s3_settings.endpoint_url)
    source = tmp_path / "model.onnx"
    source.write_bytes(os.urandom(300_000))
    size, sha = store.put_file("job/model.onnx", source)
    assert (size, sha) == (300_000, hashlib.sha256(source.read_bytes()).hexdigest())
    target = tmp_path / "down" / "model.onnx"
    target.parent.mkdir()
    store.get_to_file("job/model.onnx", target)
    assert target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]  # no temp file left behind
    url = store.presigned_get("job/model.onnx", 60)
    assert url is not None
    assert httpx.get(url).content == source.read_bytes()

    store.delete("job/model.onnx")
    store.delete("job/model.onnx")  # deleting a missing object is not an error
    assert not store.exists("job/model.onnx")
    with pytest.raises(ObjectNotFound):
        store.get_to_file("job/model.onnx", tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    assert httpx.get(url).status_code == 404
