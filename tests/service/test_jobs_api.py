"""Reading, listing, cancelling and deleting jobs; reports and artifacts; tenants; probes; error shapes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from service.db.models import Job, new_job_id, utcnow
from service.db.session import session_scope
from service.jobs import repository
from service.storage.keys import artifact_key, input_key
from tests.service.conftest import CONFIG, Api

pytestmark = pytest.mark.anyio


def insert_job(api: Api, *, tenant: str = "public", age_s: float = 0.0, status: str = "queued") -> str:
    """Inserts a queued job row directly (no upload), optionally older, and moves it to `status`."""
    job_id = new_job_id()
    with session_scope(api.context.jobs.sessions) as session:
        repository.create_job(session, job=Job(
            id=job_id, tenant=tenant, config=CONFIG, model_sha256="0" * 64, model_bytes=1,
            model_format="onnx", dataset_sha256="1" * 64, dataset_bytes=1, dataset_format="npz",
            created_at=utcnow() - timedelta(seconds=age_s)))
    if status != "queued":
        move(api, job_id, status)
    return job_id


def move(api: Api, job_id: str, status: str) -> None:
    """Drives a queued job the way a worker does: claim, then (for terminal states) finish."""
    with session_scope(api.context.jobs.sessions) as session:
        job = repository.claim_job(session, job_id=job_id, worker_id="test-worker")
        assert job is not None
        if status in ("succeeded", "failed", "cancelled"):
            assert repository.finish_job(session, job_id=job_id, epoch=job.epoch, status=status,
                                         metrics={"accuracy": 0.9} if status == "succeeded" else None,
                                         error_code="invalid_model" if status == "failed" else None,
                                         error_message="bad weights" if status == "failed" else None)


async def test_get_job_shows_progress_eta_and_links(api: Api) -> None:
    job_id = insert_job(api, status="running")
    with session_scope(api.context.jobs.sessions) as session:
        job = repository.get_job(session, tenant="public", job_id=job_id)
        assert job is not None
        job.started_at = utcnow() - timedelta(seconds=100)  # 100 s running, a quarter done → ~300 s left
        progress = {"fraction": 0.25, "epoch": 2, "epochs": 8, "step": 40}
        assert repository.update_progress(session, job_id=job_id, epoch=job.epoch, stage="finetuning",
                                          progress=progress)
    body = (await api.client.get(f"/jobs/{job_id}")).json()
    assert body["status"] == "running"
    assert body["stage"] == "finetuning"
    assert body["attempt"] == 1
    assert body["progress"]["epoch"] == 2
    assert body["progress"]["epochs"] == 8
    assert body["progress"]["step"] == 40
    assert 295 <= body["progress"]["eta_s"] <= 310
    assert body["links"]["cancel"] == f"/jobs/{job_id}/cancel"
    assert body["links"]["report"] is None


async def test_finished_job_shows_metrics_error_and_download_links(api: Api) -> None:
    done, failed = insert_job(api, status="succeeded"), insert_job(api, status="failed")
    body = (await api.client.get(f"/jobs/{done}")).json()
    assert body["metrics"] == {"accuracy": 0.9}
    assert body["progress"]["fraction"] == 1.0
    assert body["links"]["model"] == f"/jobs/{done}/artifacts/model.onnx"
    assert body["links"]["cancel"] is None
    assert body["finished_at"] is not None
    assert body["progress"]["eta_s"] is None
    body = (await api.client.get(f"/jobs/{failed}")).json()
    assert body["error"] == {"code": "invalid_model", "message": "bad weights"}


async def test_list_pages_newest_first_with_an_opaque_cursor_and_filters(api: Api) -> None:
    ids = [insert_job(api, age_s=age) for age in (50, 40, 30, 20, 10)]  # ids[-1] is the newest
    insert_job(api, tenant="someone-else")
    move(api, ids[1], "running")
    seen: list[str] = []
    cursor = None
    for _ in range(3):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.client.get("/jobs", params=params)).json()
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
    assert seen == ids[::-1]
    assert cursor is None
    running = (await api.client.get("/jobs", params={"status": "running"})).json()
    assert [job["id"] for job in running["jobs"]] == [ids[1]]


@pytest.mark.parametrize("params", [{"cursor": "garbage!"}, {"status": "sleeping"}, {"limit": 0},
                                    {"limit": 10_000}])
async def test_list_refuses_bad_parameters(api: Api, params: dict[str, Any]) -> None:
    response = await api.client.get("/jobs", params=params)
    assert response.status_code == 422
    assert response.json()["error"]["code"] in ("invalid_cursor", "invalid_request")


async def test_another_tenants_job_is_a_404_like_a_missing_one(api: Api) -> None:
    theirs = insert_job(api, tenant="other", status="succeeded")
    missing = new_job_id()
    for path in ("", "/report", "/artifacts/model.onnx"):
        a = await api.client.get(f"/jobs/{theirs}{path}")
        b = await api.client.get(f"/jobs/{missing}{path}")
        assert a.status_code == b.status_code == 404
        assert a.json()["error"]["code"] == b.json()["error"]["code"]
        assert a.text.replace(theirs, "X") == b.text.replace(missing, "X")
    for method in ("post", "delete"):
        path = f"/jobs/{theirs}" + ("/cancel" if method == "post" else "")
        assert (await api.client.request(method, path)).status_code == 404
    assert (await api.client.get("/jobs")).json()["jobs"] == []


async def test_cancel_transitions(api: Api) -> None:
    queued, running = insert_job(api), insert_job(api, status="running")
    response = await api.client.post(f"/jobs/{queued}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    response = await api.client.post(f"/jobs/{running}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelling"
    assert (await api.client.post(f"/jobs/{running}/cancel")).json()["status"] == "cancelling"  # idempotent
    again = await api.client.post(f"/jobs/{queued}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_finished"
    assert (await api.client.post(f"/jobs/{new_job_id()}/cancel")).status_code == 404


async def test_delete_removes_a_finished_job_and_its_objects_only(api: Api) -> None:
    active = (await api.submit()).json()["id"]
    done = (await api.submit(config={**CONFIG, "seed": 1})).json()["id"]
    move(api, done, "succeeded")
    refused = await api.client.delete(f"/jobs/{active}")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "not_finished"
    response = await api.client.delete(f"/jobs/{done}")
    assert response.status_code == 204
    assert response.content == b""
    assert (await api.client.get(f"/jobs/{done}")).status_code == 404
    assert (await api.client.delete(f"/jobs/{done}")).status_code == 404
    store = api.context.store
    assert not store.exists(input_key("public", done, "model"))
    assert store.exists(input_key("public", active, "model"))
    assert api.job_count() == 1


async def test_report_and_artifacts_are_409_until_success_then_served(api: Api) -> None:
    job_id = insert_job(api, status="running")
    for path in ("report", "artifacts/model.onnx"):
        response = await api.client.get(f"/jobs/{job_id}/{path}")
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "not_ready"
    report = {"pruned": {"accuracy": 0.91}, "baseline": {"accuracy": 0.92}}
    model = bytes(range(256)) * 5000  # > 1 MiB, so it streams in several chunks
    store = api.context.store
    store.put_stream(artifact_key("public", job_id, "report.json"), [json.dumps(report).encode()])
    store.put_stream(artifact_key("public", job_id, "model.onnx"), [model])
    with session_scope(api.context.jobs.sessions) as session:
        job = repository.get_job(session, tenant="public", job_id=job_id)
        assert job is not None
        assert repository.finish_job(session, job_id=job_id, epoch=job.epoch, status="succeeded")
    response = await api.client.get(f"/jobs/{job_id}/report")
    assert response.status_code == 200
    assert response.json() == report
    response = await api.client.get(f"/jobs/{job_id}/artifacts/model.onnx")
    assert response.status_code == 200
    assert response.content == model
    assert response.headers["content-length"] == str(len(model))
    assert "model.onnx" in response.headers["content-disposition"]
    missing = await api.client.get(f"/jobs/{job_id}/artifacts/model.onnx.zst")  # never uploaded
    assert missing.status_code == 404
    unknown = await api.client.get(f"/jobs/{job_id}/artifacts/secrets.txt")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"


async def test_unknown_routes_and_methods_use_the_error_shape(api: Api) -> None:
    response = await api.client.get("/nowhere")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = await api.client.put("/jobs")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "allow" in response.headers


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


async def test_database_gone_is_503_not_500(make_api: Callable[..., Any], tmp_path: Path) -> None:
    async with make_api() as api:
        # The database file is replaced by a folder: every connection fails, as with a dead server.
        api.context.engine.dispose()
        for path in tmp_path.glob("secateur.db*"):
            path.unlink()
        (tmp_path / "secateur.db").mkdir()
        ready = await api.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "database_unavailable"
        assert ready.json()["checks"]["database"] != "ok"
        assert ready.json()["checks"]["storage"] == "ok"
        for response in (await api.client.get(f"/jobs/{new_job_id()}"), await api.client.get("/jobs")):
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "database_unavailable"


async def test_broker_down_fails_readiness(make_api: Callable[..., Any]) -> None:
    async with make_api(broker_url="redis://127.0.0.1:9/0") as api:
        ready = await api.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "broker_unavailable"


async def test_openapi_documents_the_multipart_body(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    body = spec["paths"]["/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(body["schema"]["required"]) == {"model", "dataset", "config"}
    assert "config" in body["example"]
    assert "Idempotency-Key" in [p["name"] for p in spec["paths"]["/jobs"]["post"]["parameters"]]
