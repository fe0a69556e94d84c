"""Object storage for uploads, artifacts and checkpoints: a local folder or S3, picked by URL scheme."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from service.settings import Settings
from service.storage.base import ObjectNotFound, ObjectStore, ObjectWriter, StorageError

__all__ = ["ObjectNotFound", "ObjectStore", "ObjectWriter", "StorageError", "make_store", "store_from_url"]


def store_from_url(url: str, *, endpoint_url: str | None = None, region: str = "us-east-1",
                   presign_endpoint_url: str | None = None) -> ObjectStore:
    """Builds the store for `file://PATH` or `s3://BUCKET/PREFIX` (boto3 is imported only for S3)."""
    if url.startswith("file://"):
        from service.storage.local import LocalStore

        return LocalStore(Path(url.removeprefix("file://")))
    if url.startswith("s3://"):
        from service.storage.s3 import S3Store, make_s3_client

        parsed = urlparse(url)
        if not parsed.netloc:
            raise ValueError(f"storage URL {url!r} names no bucket (s3://bucket/prefix)")
        client = make_s3_client(endpoint_url, region)
        presign = make_s3_client(presign_endpoint_url, region) if presign_endpoint_url else None
        return S3Store(client, parsed.netloc, parsed.path, presign_client=presign)
    raise ValueError(f"unsupported storage URL {url!r}: use file://PATH or s3://BUCKET/PREFIX")


def make_store(settings: Settings) -> ObjectStore:
    """Builds the store the settings name."""
    return store_from_url(
        settings.storage_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        presign_endpoint_url=settings.s3_presign_endpoint_url,
    )
