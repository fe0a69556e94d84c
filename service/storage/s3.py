"""Objects in an S3 bucket (AWS, MinIO, SeaweedFS): multipart uploads for streams, presigned GETs."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from service.storage.base import CHUNK, ObjectNotFound, ObjectStore, ObjectWriter, StorageError
from service.storage.keys import check_key

__all__ = ["PART_SIZE", "S3Store", "make_s3_client"]

PART_SIZE = 8 * 1024 * 1024  # multipart part size (S3's minimum is 5 MiB for all parts but the last)
_MISSING = {"404", "NoSuchKey", "NotFound"}
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _storage_errors(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turns boto3 failures (unreachable endpoint, denied, …) into StorageError, mapped to a 503."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"object store request failed: {exc}") from exc

    return wrapper


def make_s3_client(endpoint_url: str | None, region: str) -> Any:
    """Creates a boto3 S3 client: path-style addressing (MinIO, SeaweedFS), bounded timeouts and retries."""
    config = Config(
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _missing(exc: ClientError) -> bool:
    """Tells whether a boto3 error means "no such object"."""
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


class _S3Writer(ObjectWriter):
    """Buffers one part at a time; small objects become one PUT, large ones a multipart upload."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        super().__init__()
        self._client, self._bucket, self._key = client, bucket, key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    @_storage_errors
    def _write(self, data: bytes) -> None:
        """Adds to the buffer and sends every full part."""
        self._buffer += data
        while len(self._buffer) >= PART_SIZE:
            self._send_part(bytes(self._buffer[:PART_SIZE]))
            del self._buffer[:PART_SIZE]

    def _send_part(self, body: bytes) -> None:
        """Uploads one part, starting the multipart upload on the first."""
        if self._upload_id is None:
            created = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        sent = self._client.upload_part(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                                        PartNumber=number, Body=body)
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    @_storage_errors
    def _commit(self) -> None:
        """Sends what is left: one PUT for a small object, else the last part and the completion."""
        if self._upload_id is None:
            self._client.put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer))
        else:
            if self._buffer:
                self._send_part(bytes(self._buffer))
            self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts})
        self._buffer.clear()

    @_storage_errors
    def abort(self) -> None:
        """Drops the buffer and aborts a started multipart upload, so no parts are billed or left."""
        self._buffer.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=upload_id)


class S3Store(ObjectStore):
    """A bucket and a key prefix; `presign_client` may use the endpoint clients can reach."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, presign_client: Any = None) -> None:
        self._client, self._bucket = client, bucket
        self._prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self._presign = presign_client or client

    def _key(self, key: str) -> str:
        """Returns the bucket key of an object key (checked, then prefixed)."""
        return self._prefix + check_key(key)

    @_storage_errors
    def _get(self, key: str, **extra: Any) -> Any:
        """GETs an object (or a range of it); ObjectNotFound when it is missing."""
        try:
            return self._client.get_object(Bucket=self._bucket, Key=self._key(key), **extra)
        except ClientError as exc:
            if _missing(exc):
                raise ObjectNotFound(key) from None
            raise

    def open_writer(self, key: str) -> ObjectWriter:
        """Starts a (multipart) upload of `key`."""
        return _S3Writer(self._client, self._bucket, self._key(key))

    @_storage_errors
    def open_stream(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Starts the GET now (so a missing object raises here) and yields the body in chunks."""
        body = self._get(key)["Body"]
        return iter(body.iter_chunks(chunk_size))

    @_storage_errors
    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Reads `length` bytes from `start` with an HTTP Range request."""
        if length <= 0:
            return b""
        data: bytes = self._get(key, Range=f"bytes={start}-{start + length - 1}")["Body"].read()
        return data

    @_storage_errors
    def size(self, key: str) -> int:
        """Returns the object's size from a HEAD request."""
        try:
            head = self._client.head_object(Bucket=self._bucket, Key=self._key(key))
        except ClientError as exc:
            if _missing(exc):
                raise ObjectNotFound(key) from None
            raise
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        """Tells whether the object exists (HEAD)."""
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    @_storage_errors
    def delete(self, key: str) -> None:
        """Deletes the object (S3 deletes of missing keys succeed)."""
        self._client.delete_object(Bucket=self._bucket, Key=self._key(key))

    @_storage_errors
    def delete_prefix(self, prefix: str) -> None:
        """Deletes every object under the folder prefix, 1000 keys per request."""
        if not prefix.endswith("/"):
            raise ValueError(f"prefix {prefix!r} must end with '/'")
        full = self._key(prefix.rstrip("/")) + "/"
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=full)
        for page in pages:
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:
                self._client.delete_objects(Bucket=self._bucket, Delete={"Objects": objects, "Quiet": True})

    def check(self) -> None:
        """Raises StorageError unless the bucket answers a HEAD."""
        try:
            self._client.head_bucket(Bucket=self._bucket)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"bucket {self._bucket!r} is not reachable: {exc}") from exc

    @_storage_errors
    def presigned_get(self, key: str, expires_s: int) -> str | None:
        """Returns a GET-only URL valid for `expires_s` seconds."""
        url: str = self._presign.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": self._key(key)}, ExpiresIn=expires_s)
        return url
