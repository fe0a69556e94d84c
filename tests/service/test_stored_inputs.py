"""Stored inputs: `POST /models` and `POST /datasets` store a file once per content, jobs name them by id.

Same bytes twice are stored once and counted once against the storage quota; a stored input cannot be
deleted while an unfinished job names it; `POST /jobs` and `POST /datasets/validate` take ids as JSON.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from service.db.session import session_scope
from service.jobs import repository
from tests.service.conftest import CONFIG, Api, npz_dataset, safetensors_model

pytestmark = pytest.mark.anyio


async def store(api: Api, kind: str, data: bytes, name: str = "file.bin") -> httpx.Response:
    """POSTs one file to /models or /datasets."""
    return await api.client.post(f"/{kind}s", files={"file": (name, data)})


def inputs_on_disk(api: Api) -> list[str]:
    """The stored-input objects in the local store (job uploads and temp files left out)."""
    return [str(p) for p in api.stored_files() if "/inputs/" in str(p) and "/jobs/" not in str(p)]


def used_bytes(api: Api) -> int:
    """The public tenant's storage use as the quota sees it."""
    with session_scope(api.context.jobs.sessions) as session:
        return repository.stored_input_bytes(session, tenant="public")


async def submit_ids(api: Api, model_id: str, dataset_id: str, config: Any = None) -> httpx.Response:
    """POSTs a job as JSON naming stored inputs."""
    body = {"model_id": model_id, "dataset_id": dataset_id, "config": CONFIG if config is None else config}
    return await api.client.post("/jobs", json=body)


async def test_same_bytes_are_stored_once_under_one_id(api: Api) -> None:
    """201 with {id, sha256, bytes, format, created_at}; the same bytes again: 200, the same id, one copy."""
    model = safetensors_model()
    first = await store(api, "model", model, "a.safetensors")
    assert first.status_code == 201, first.text
    body = first.json()
    assert set(body) == {"id", "sha256", "bytes", "format", "created_at"}
    assert (body["sha256"], body["bytes"], body["format"]) == (hashlib.sha256(model).hexdigest(), len(model),
                                                               "safetensors")
    assert first.headers["location"] == f"/models/{body['id']}"
    again = await store(api, "model", model, "b.safetensors")
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]
    assert len(inputs_on_disk(api)) == 1
    dataset = await store(api, "dataset", npz_dataset())
    assert (dataset.status_code, dataset.json()["format"]) == (201, "npz")
    assert len(inputs_on_disk(api)) == 2
    listed = (await api.client.get("/models")).json()["items"]
    assert [item["id"] for item in listed] == [body["id"]]
    assert (await api.client.get(f"/models/{body['id']}")).json() == body
    # A model id is not a dataset id, and an unknown id is a 404 in the error shape.
    assert (await api.client.get(f"/datasets/{body['id']}")).status_code == 404
    missing = await api.client.get("/models/00000000-0000-4000-8000-000000000000")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")


async def test_uploads_are_sniffed_as_job_uploads_are(api: Api) -> None:
    """A pickle is refused by its first bytes, a stray part is refused, and neither leaves an object."""
    pickle = await store(api, "model", b"\x80\x04\x95" + b"\0" * 100)
    assert pickle.status_code == 415, pickle.text
    assert pickle.json()["error"]["code"] == "unsupported_model_format"
    stray = await api.client.post("/datasets", files={"dataset": ("d.npz", npz_dataset())})
    assert (stray.status_code, stray.json()["error"]["code"]) == (422, "unexpected_part")
    empty = await api.client.post("/models", content=b"{}", headers={"content-type": "application/json"})
    assert empty.status_code == 415
    assert api.stored_files() == []


async def test_quota_counts_stored_bytes_once(make_api: Callable[..., Any]) -> None:
    """A dataset stored once and named by two jobs counts once; uploading it with each job would not fit."""
    model, dataset = safetensors_model(), npz_dataset()
    quota = len(model) + len(dataset) + len(dataset) // 2  # room for each once, not for a second dataset
    async with make_api(max_stored_bytes_per_tenant=quota) as api:
        model_id = (await store(api, "model", model)).json()["id"]
        dataset_id = (await store(api, "dataset", dataset)).json()["id"]
        assert (await store(api, "dataset", dataset)).status_code == 200  # a twin costs nothing
        for _ in range(2):
            response = await submit_ids(api, model_id, dataset_id)
            assert response.status_code == 202, response.text
        assert used_bytes(api) == len(model) + len(dataset)
        assert len(inputs_on_disk(api)) == 2
        refused = await api.submit(model=model, dataset=dataset)  # the same files as uploads: over quota
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "storage_quota_exceeded"
        other = await store(api, "dataset", npz_dataset() + b"\0" * len(dataset))
        assert other.status_code == 403  # new content does count


async def test_delete_is_refused_while_an_unfinished_job_uses_it(api: Api) -> None:
    """409 in_use while a queued job names the dataset; once it is cancelled the delete removes the bytes."""
    model_id = (await store(api, "model", safetensors_model())).json()["id"]
    dataset_id = (await store(api, "dataset", npz_dataset())).json()["id"]
    job = await submit_ids(api, model_id, dataset_id)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    refused = await api.client.delete(f"/datasets/{dataset_id}")
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "in_use")
    assert job_id in refused.json()["error"]["message"]
    assert (await api.client.post(f"/jobs/{job_id}/cancel")).status_code == 202
    assert (await api.client.delete(f"/datasets/{dataset_id}")).status_code == 204
    assert (await api.client.get(f"/datasets/{dataset_id}")).status_code == 404
    assert len(inputs_on_disk(api)) == 1  # the model stays
    gone = await submit_ids(api, model_id, dataset_id)
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "not_found")


async def test_a_json_job_is_recorded_on_its_stored_inputs(api: Api) -> None:
    """The job row names the stored ids and their hashes; its own folder holds no copy of them."""
    model_id = (await store(api, "model", safetensors_model())).json()["id"]
    dataset = await store(api, "dataset", npz_dataset())
    response = await submit_ids(api, model_id, dataset.json()["id"], config=CONFIG)
    assert response.status_code == 202, response.text
    assert response.json()["inputs"] == {"model_id": model_id, "dataset_id": dataset.json()["id"],
                                         "model_sha256": hashlib.sha256(safetensors_model()).hexdigest(),
                                         "dataset_sha256": dataset.json()["sha256"]}
    job = api.context.jobs.get(tenant="public", job_id=response.json()["id"])
    assert (job.model_id, job.dataset_id) == (model_id, dataset.json()["id"])
    assert job.dataset_sha256 == dataset.json()["sha256"]
    assert not [p for p in api.stored_files() if "/jobs/" in str(p)]
    assert len(api.wakeups()) == 1


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"model_id": "x", "dataset_id": "y"}, 422, "invalid_body"),  # no config
    ({"model_id": "x", "dataset_id": "y", "config": {}, "extra": 1}, 422, "invalid_body"),
    ({"model_id": "x", "dataset_id": "y", "config": CONFIG}, 404, "not_found"),
])
async def test_bad_json_jobs_are_coded_4xx(api: Api, body: dict[str, Any], status: int, code: str) -> None:
    """A JSON job body of the wrong shape, or naming ids that do not exist, is refused with a code."""
    response = await api.client.post("/jobs", json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert api.job_count() == 0


async def test_a_bad_config_with_stored_ids_is_invalid_config(api: Api) -> None:
    """The config is checked as for an upload; the stored inputs stay."""
    model_id = (await store(api, "model", safetensors_model())).json()["id"]
    dataset_id = (await store(api, "dataset", npz_dataset())).json()["id"]
    response = await submit_ids(api, model_id, dataset_id, config={"method": "l1"})
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_config")
    assert len(inputs_on_disk(api)) == 2


async def test_validate_takes_a_stored_dataset_id(api: Api) -> None:
    """`POST /datasets/validate` with JSON {"dataset_id"} checks the stored file (and 404s an unknown id)."""
    dataset_id = (await store(api, "dataset", npz_dataset())).json()["id"]
    facts = await api.client.post("/datasets/validate", json={"dataset_id": dataset_id})
    assert facts.status_code == 200, facts.text
    assert (facts.json()["format"], facts.json()["num_classes"]) == ("npz", 2)
    unknown = await api.client.post("/datasets/validate", json={"dataset_id": "nope"})
    assert unknown.status_code == 404
