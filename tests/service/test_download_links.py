"""Download links: minted with the key, they stream one artifact through the API to a header-less browser.

They stream even where the store presigns (S3): the dashboard's CSP and the object store's reachability
are why links exist. A link opens only its own tenant's job and artifact, and only until it expires.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from service.db.session import session_scope
from service.jobs import repository
from service.storage.keys import artifact_key
from tests.service.conftest import Api
from tests.service.test_jobs_api import insert_job

pytestmark = pytest.mark.anyio

MODEL = bytes(range(256)) * 5000  # > 1 MiB: streamed in several chunks


def finished_job(api: Api) -> str:
    """A succeeded job of the open tenant with a stored model.onnx."""
    job_id = insert_job(api, status="running")
    api.context.store.put_stream(artifact_key("public", job_id, "model.onnx"), [MODEL])
    with session_scope(api.context.jobs.sessions) as session:
        job = repository.get_job(session, tenant="public", job_id=job_id)
        assert job is not None
        assert repository.finish_job(session, job_id=job_id, epoch=job.epoch, status="succeeded")
    return job_id


async def link(api: Api, job_id: str, name: str = "model.onnx") -> dict[str, Any]:
    """POSTs for a link; returns its body."""
    response = await api.client.post(f"/jobs/{job_id}/artifacts/{name}/link")
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_link_streams_the_artifact_even_where_the_store_would_presign(api: Api) -> None:
    job_id = finished_job(api)
    api.context.store.presigned_get = lambda key, expires_s: "https://elsewhere.example/x"  # type: ignore[method-assign]
    body = await link(api, job_id)
    assert body["url"].startswith(f"/jobs/{job_id}/artifacts/model.onnx/download?token=")
    response = await api.client.get(body["url"])
    assert response.status_code == 200
    assert response.content == MODEL
    assert response.headers["content-disposition"] == 'attachment; filename="model.onnx"'
    assert response.headers["content-length"] == str(len(MODEL))


async def test_a_link_opens_nothing_else(api: Api) -> None:
    job_id, other = finished_job(api), finished_job(api)
    token = parse_qs(urlsplit((await link(api, job_id))["url"]).query)["token"][0]
    tenant, expires, mac = token.split(".")
    forged = [
        f"/jobs/{other}/artifacts/model.onnx/download?token={token}",  # another job
        f"/jobs/{job_id}/artifacts/model.onnx.zst/download?token={token}",  # another artifact
        f"/jobs/{job_id}/artifacts/model.onnx/download?token=acme.{expires}.{mac}",  # another tenant
        f"/jobs/{job_id}/artifacts/model.onnx/download?token={tenant}.{int(expires) + 60}.{mac}",  # longer
        f"/jobs/{job_id}/artifacts/model.onnx/download?token={tenant}.{expires}.{'0' * 64}",
        f"/jobs/{job_id}/artifacts/model.onnx/download?token=garbage",
        f"/jobs/{job_id}/artifacts/model.onnx/download?token={tenant}.{'9' * 5000}.{mac}",  # int() limit
        f"/jobs/{job_id}/artifacts/model.onnx/download?token={tenant}.{expires}.{'é' * 64}",  # not ASCII
        f"/jobs/{job_id}/artifacts/model.onnx/download",
    ]
    for url in forged:
        response = await api.client.get(url)
        assert response.status_code == 401, url
        assert response.json()["error"]["code"] == "unauthorized"


async def test_an_expired_link_is_refused(make_api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async with make_api(presign_expires_s=1) as api:
        url = (await link(api, finished_job(api)))["url"]
        now = time.time()
        monkeypatch.setattr(time, "time", lambda: now + 5)
        assert (await api.client.get(url)).status_code == 401


async def test_links_are_refused_like_downloads_before_success(api: Api) -> None:
    running = insert_job(api, status="running")
    response = await api.client.post(f"/jobs/{running}/artifacts/model.onnx/link")
    assert response.status_code == 409
    done = finished_job(api)
    missing = await api.client.post(f"/jobs/{done}/artifacts/model.onnx.zst/link")
    assert missing.status_code == 404
    assert json.loads(missing.text)["error"]["code"] == "not_found"
