"""The API on S3 storage: an upload streams into the bucket; a finished model is a 307 to a presigned GET."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.db.migrate import upgrade_head
from service.db.session import session_scope
from service.jobs import repository
from service.storage.keys import artifact_key, input_key
from tests.service.conftest import CONFIG, make_settings, npz_dataset, safetensors_model

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    """Asyncio only."""
    return "asyncio"


async def test_upload_to_s3_then_presigned_download(s3_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, storage_url=f"s3://{s3_settings.bucket}/api-{secrets.token_hex(4)}",
                             s3_endpoint_url=s3_settings.endpoint_url)
    app = create_app(settings)
    context = app.state.context
    upgrade_head(context.engine)
    model = safetensors_model(padding_mib=9)  # larger than one multipart part
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        files = {"model": ("m.safetensors", model), "dataset": ("d.npz", npz_dataset())}
        response = await client.post("/jobs", data={"config": json.dumps(CONFIG)}, files=files)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        stored = b"".join(context.store.open_stream(input_key("public", job_id, "model")))
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(model).hexdigest()
        context.store.put_stream(artifact_key("public", job_id, "model.onnx"), [b"onnx!"])
        with session_scope(context.jobs.sessions) as session:
            job = repository.claim_job(session, job_id=job_id, worker_id="test")
            assert job is not None
            assert repository.finish_job(session, job_id=job_id, epoch=job.epoch, status="succeeded")
        redirect = await client.get(f"/jobs/{job_id}/artifacts/model.onnx")
        assert redirect.status_code == 307
        assert httpx.get(redirect.headers["location"]).content == b"onnx!"
        assert (await client.get("/readyz")).json()["checks"]["storage"] == "ok"
        assert (await client.delete(f"/jobs/{job_id}")).status_code == 204
        assert not context.store.exists(input_key("public", job_id, "model"))
    context.engine.dispose()
