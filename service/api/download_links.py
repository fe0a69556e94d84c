"""Short-lived download links: a URL that streams one artifact through the API with no Authorization header.

Why: a browser cannot send the API key on a plain navigation, and fetching with the key holds the whole file
in the page's memory; following the S3 presigned redirect from `fetch` is blocked by the page's CSP (another
origin) and needs the object store reachable from the browser. So the dashboard asks for a link with its
key (`POST /jobs/{id}/artifacts/{name}/link`) and navigates to it: the browser streams the file to disk.

A token is `<tenant>.<expiry>.<HMAC-SHA256>` over (tenant, job id, artifact, expiry), valid for
`presign_expires_s` like a presigned URL. Its key is 32 random bytes kept in the object store beside the
artifacts it unlocks (whoever can read the key can already read them), so every API replica verifies
every other's links with no shared setting and nothing in the database.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends
from fastapi.security import APIKeyQuery
from pydantic import BaseModel

from service.errors import Unauthorized
from service.jobs.service import Download, JobService
from service.storage.base import ObjectNotFound, ObjectStore
from service.storage.keys import artifact_key

__all__ = ["SIGNING_KEY", "DownloadLink", "LinkTokenDep", "create_link", "open_link"]

SIGNING_KEY = "system/download-links.key"
_KEY_BYTES = 32
_TOKEN = re.compile(r"(?P<tenant>[a-z0-9][a-z0-9_-]{0,63})\.(?P<expires>[0-9]{1,12})\.(?P<mac>[0-9a-f]{64})")
# Declared as a security scheme so OpenAPI says what authorizes the download; a missing token is our 401.
_link_token = APIKeyQuery(name="token", auto_error=False, scheme_name="DownloadLink",
                          description="the token of a URL from `POST /jobs/{id}/artifacts/{name}/link`")
LinkTokenDep = Annotated[str | None, Depends(_link_token)]


class DownloadLink(BaseModel):
    """A URL that downloads one artifact without credentials until `expires_at`."""

    url: str
    expires_at: datetime


def create_link(jobs: JobService, *, tenant: str, job_id: str, name: str) -> DownloadLink:
    """Checks the artifact can be downloaded now (404/409 as the download would), then signs a link to it."""
    jobs.artifact(tenant=tenant, job_id=job_id, name=name)
    expires = int(time.time()) + jobs.settings.presign_expires_s
    mac = _mac(_signing_key(jobs.store), tenant, job_id, name, expires)
    return DownloadLink(url=f"/jobs/{job_id}/artifacts/{name}/download?token={tenant}.{expires}.{mac}",
                        expires_at=datetime.fromtimestamp(expires, UTC))


def open_link(jobs: JobService, token: str | None, *, job_id: str, name: str) -> Download:
    """Returns the artifact as a stream through this process if `token` is a live link to it; else 401."""
    tenant = _verify(jobs.store, token or "", job_id=job_id, name=name)
    download = jobs.artifact(tenant=tenant, job_id=job_id, name=name)
    if download.chunks is not None:
        return download
    key = artifact_key(tenant, job_id, name)  # S3 would presign: stream it here instead (no CORS, no CSP)
    return Download(name=name, chunks=jobs.store.open_stream(key), size=jobs.store.size(key))


def _verify(store: ObjectStore, token: str, *, job_id: str, name: str) -> str:
    """Returns the tenant a token was signed for; one 401 for malformed, expired or forged tokens."""
    match = _TOKEN.fullmatch(token)
    key = _read_key(store) if match else None
    if not (match and key and int(match["expires"]) >= time.time() and hmac.compare_digest(
            match["mac"].encode(), _mac(key, match["tenant"], job_id, name, int(match["expires"])).encode())):
        raise Unauthorized("this download link is invalid or has expired; ask for a new one")
    return match["tenant"]


def _mac(key: bytes, tenant: str, job_id: str, name: str, expires: int) -> str:
    """The hex HMAC that binds a link to one tenant, job, artifact and expiry."""
    return hmac.new(key, f"{tenant}\n{job_id}\n{name}\n{expires}".encode(), hashlib.sha256).hexdigest()


def _read_key(store: ObjectStore) -> bytes | None:
    """Reads the links' key from the store; None before the first link was made. Never cached: replicas
    that raced to make it converge on the one the store kept."""
    try:
        return b"".join(store.open_stream(SIGNING_KEY))
    except ObjectNotFound:
        return None


def _signing_key(store: ObjectStore) -> bytes:
    """Returns the links' key, making it on first use."""
    key = _read_key(store)
    if key is None:
        store.put_stream(SIGNING_KEY, [secrets.token_bytes(_KEY_BYTES)])
        key = _read_key(store)  # a replica that wrote at the same time may have won
    if key is None:
        raise ObjectNotFound(f"{SIGNING_KEY} vanished right after it was written")
    return key
