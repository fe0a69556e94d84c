"""`/sweeps` over the real app (SQLite, local store): stored ids in, one job per target, the front out.

Points are finished here by writing their jobs' outcomes as a worker would (claim, then the fenced
finish); tests/e2e/test_sweep_dashboard.py runs a sweep on a real worker.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlalchemy import func, select

from service.db.models import Job, Sweep
from service.db.session import session_scope
from service.errors import Unavailable
from service.jobs import repository
from service.jobs.service import JobService
from tests.service.conftest import CONFIG, Api, npz_dataset, safetensors_model

pytestmark = pytest.mark.anyio

SWEEP_CONFIG = {k: v for k, v in CONFIG.items() if k != "target"}
RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9)


async def stored_ids(api: Api) -> tuple[str, str]:
    """Uploads the model and the dataset once each; returns their ids."""
    model = await api.client.post("/models", files={"file": ("m.safetensors", safetensors_model())})
    dataset = await api.client.post("/datasets", files={"file": ("d.npz", npz_dataset())})
    assert {model.status_code, dataset.status_code} <= {200, 201}, (model.text, dataset.text)  # 200: a twin
    return model.json()["id"], dataset.json()["id"]


async def create(api: Api, **body: Any) -> Any:
    """POSTs a sweep of RATIOS on freshly stored inputs unless the body says otherwise."""
    if "model_id" not in body:
        body["model_id"], body["dataset_id"] = await stored_ids(api)
    body.setdefault("config", SWEEP_CONFIG)
    if "range" not in body:
        body.setdefault("targets", [{"pruning_ratio": r} for r in RATIOS])
    return await api.client.post("/sweeps", json=body)


def finish(api: Api, job_id: str, status: str, accuracy: float = 0.0, flops: int = 0) -> None:
    """Ends a queued job as a worker would, with the metrics a worker's summary holds."""
    metrics = {
        "baseline": {"accuracy": 0.95, "flops": 1000, "params": 500, "onnx_bytes": 4000,
                     "latency_ms": {"b1": 1.0, "b64": 20.0}},
        "pruned": {"accuracy": accuracy, "flops": flops, "params": flops // 2, "onnx_bytes": 4 * flops,
                   "latency_ms": {"b1": flops / 1000, "b64": flops / 50}},
        "achieved": {"flops_reduction": 1000 / max(flops, 1)},
    }
    with session_scope(api.context.jobs.sessions) as session:
        job = repository.claim_job(session, job_id=job_id, worker_id="test")
        assert job is not None
        ended = repository.finish_job(session, job_id=job_id, epoch=job.epoch, status=status,
                                      metrics=metrics if status == "succeeded" else None,
                                      error_code="invalid_model" if status == "failed" else None)
        assert ended


def count(api: Api, model: type[Any]) -> int:
    """How many rows a table holds."""
    with session_scope(api.context.jobs.sessions) as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


async def test_a_sweep_queues_one_job_per_target_on_the_stored_bytes(make_api: Any) -> None:
    async with make_api(max_active_jobs_per_tenant=8) as api:
        response = await create(api)
        assert response.status_code == 202, response.text
        body = response.json()
        assert response.headers["location"] == f"/sweeps/{body['id']}"
        assert len(body["jobs"]) == 5
        assert len(api.wakeups()) == 5

        sweep = (await api.client.get(f"/sweeps/{body['id']}")).json()
        assert sweep["status"] == "running"
        assert [p["job_id"] for p in sweep["points"]] == body["jobs"]
        assert [p["target"] for p in sweep["points"]] == [{"pruning_ratio": r} for r in RATIOS]
        assert {p["status"] for p in sweep["points"]} == {"queued"}
        assert sweep["pareto"] == []
        for job_id in body["jobs"]:
            job = (await api.client.get(f"/jobs/{job_id}")).json()
            assert job["config"]["target"] == {"pruning_ratio": RATIOS[body["jobs"].index(job_id)]}
            assert job["config"]["finetune"]["epochs"] == 1
        # The dataset's bytes are in storage once, however many points use them.
        digest = hashlib.sha256(npz_dataset()).hexdigest()
        copies = [p for p in api.stored_files() if hashlib.sha256(p.read_bytes()).hexdigest() == digest]
        assert len(copies) == 1


async def test_the_front_and_status_follow_the_points_as_they_finish(make_api: Any) -> None:
    async with make_api(max_active_jobs_per_tenant=8) as api:
        body = (await create(api)).json()
        jobs = body["jobs"]
        outcomes = [(0.94, 800), (0.93, 600), (0.90, 700), (0.85, 300)]  # point 2 is dominated by point 1
        for job_id, (accuracy, flops) in zip(jobs, outcomes, strict=False):
            finish(api, job_id, "succeeded", accuracy, flops)
        sweep = (await api.client.get(f"/sweeps/{body['id']}")).json()
        assert sweep["status"] == "running"  # one point is still queued
        assert sweep["pareto"] == [jobs[0], jobs[1], jobs[3]]
        assert sweep["pareto_by"]["flops"] == [jobs[0], jobs[1], jobs[3]]
        assert sweep["baseline"]["flops"] == 1000
        first = sweep["points"][0]
        figures = (first["accuracy"], first["flops"], first["params"], first["onnx_bytes"])
        assert figures == (0.94, 800, 400, 3200)
        assert first["latency_ms"] == {"b1": 0.8, "b64": 16.0}
        finish(api, jobs[4], "failed")
        sweep = (await api.client.get(f"/sweeps/{body['id']}")).json()
        assert sweep["status"] == "failed"
        assert sweep["points"][4]["error"]["code"] == "invalid_model"

        listed = (await api.client.get("/sweeps")).json()
        assert [s["id"] for s in listed["sweeps"]] == [body["id"]]
        assert listed["next_cursor"] is None


async def test_cancel_and_delete_act_on_the_whole_sweep(make_api: Any) -> None:
    async with make_api(max_active_jobs_per_tenant=8) as api:
        body = (await create(api)).json()
        finish(api, body["jobs"][0], "succeeded", 0.9, 500)
        refused = await api.client.delete(f"/sweeps/{body['id']}")
        assert (refused.status_code, refused.json()["error"]["code"]) == (409, "not_finished")

        cancelled = await api.client.post(f"/sweeps/{body['id']}/cancel")
        assert cancelled.status_code == 202
        assert cancelled.json()["status"] == "cancelled"
        assert [p["status"] for p in cancelled.json()["points"]] == ["succeeded"] + ["cancelled"] * 4
        again = await api.client.post(f"/sweeps/{body['id']}/cancel")
        assert (again.status_code, again.json()["error"]["code"]) == (409, "already_finished")

        assert (await api.client.delete(f"/sweeps/{body['id']}")).status_code == 204
        assert (await api.client.get(f"/sweeps/{body['id']}")).status_code == 404
        assert count(api, Job) == 0
        assert count(api, Sweep) == 0
        assert (await api.client.get("/models")).json()["items"]  # the stored inputs stay


@pytest.mark.parametrize(("change", "status", "code"), [
    ({"config": CONFIG}, 422, "invalid_sweep"),  # a target in the config: which one would win?
    ({"targets": [{"sparsity": 0.5}]}, 422, "invalid_config"),  # l1 takes no sparsity target
    ({"targets": [{"pruning_ratio": 0.5}, {"pruning_ratio": 1.5}]}, 422, "invalid_config"),
    ({"targets": [{"pruning_ratio": 0.5}], "range": {"kind": "pruning_ratio", "start": 0.1, "stop": 0.5,
                                                       "num": 2}}, 422, "invalid_sweep"),
    ({"model_id": "9d0cd5b8-ffc0-4f3e-9f55-3f4b2b4f7a10", "dataset_id": "x"}, 404, "not_found"),
    ({"targets": [{"pruning_ratio": r / 10} for r in range(1, 10)]}, 429, "too_many_active_jobs"),
])
async def test_a_bad_sweep_is_refused_before_any_job_exists(
    make_api: Any, change: dict[str, Any], status: int, code: str
) -> None:
    async with make_api(max_active_jobs_per_tenant=8) as api:
        response = await create(api, **change)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
        assert count(api, Job) == 0
        assert count(api, Sweep) == 0
        assert api.wakeups() == []


async def test_a_range_gives_evenly_spaced_targets(make_api: Any) -> None:
    async with make_api(max_active_jobs_per_tenant=8) as api:
        response = await create(api, range={"kind": "pruning_ratio", "start": 0.2, "stop": 0.8, "num": 4})
        assert response.status_code == 202, response.text
        sweep = (await api.client.get(f"/sweeps/{response.json()['id']}")).json()
        assert [p["target"]["pruning_ratio"] for p in sweep["points"]] == [0.2, 0.4, 0.6, 0.8]


async def test_a_sweeps_webhook_url_is_every_points_callback(make_api: Any) -> None:
    async with make_api(max_active_jobs_per_tenant=8, webhook_secret="s3cret") as api:
        refused = await create(api, config={**SWEEP_CONFIG, "webhook_url": "http://127.0.0.1:9/hook"})
        assert (refused.status_code, refused.json()["error"]["code"]) == (422, "webhook_target_refused")
        assert count(api, Job) == 0
        assert count(api, Sweep) == 0
    # The same data dir, now allowing private targets (a development setting).
    async with make_api(max_active_jobs_per_tenant=8, webhook_allow_private=True, webhook_secret="s3cret",
                        webhook_sender_enabled=False) as api:
        hook = "http://127.0.0.1:9/hook"
        response = await create(api, config={**SWEEP_CONFIG, "webhook_url": hook})
        assert response.status_code == 202, response.text
        for job_id in response.json()["jobs"]:
            assert (await api.client.get(f"/jobs/{job_id}")).json()["config"]["webhook_url"] == hook


async def test_the_listing_pages_by_count_and_by_bytes(make_api: Any) -> None:
    async with make_api(max_active_jobs_per_tenant=8, max_list_bytes=1500) as api:
        ids = [(await create(api, targets=[{"pruning_ratio": r}])).json()["id"] for r in (0.2, 0.4, 0.6)]
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            body = (await api.client.get("/sweeps", params=params)).json()
            seen += [s["id"] for s in body["sweeps"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == ids[::-1]  # newest first, each once
        assert pages == 3  # a sweep's JSON is ~1 KB: 1500 bytes hold one, though `limit` allows two


async def test_a_sweep_whose_jobs_were_deleted_one_by_one_can_still_be_deleted(make_api: Any) -> None:
    async with make_api(max_active_jobs_per_tenant=8) as api:
        body = (await create(api, targets=[{"pruning_ratio": 0.5}])).json()
        finish(api, body["jobs"][0], "succeeded", 0.9, 500)
        assert (await api.client.delete(f"/jobs/{body['jobs'][0]}")).status_code == 204
        assert (await api.client.get(f"/sweeps/{body['id']}")).json()["points"] == []
        assert (await api.client.delete(f"/sweeps/{body['id']}")).status_code == 204


async def test_a_sweep_that_fails_part_way_leaves_no_job_and_no_sweep(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_api(max_active_jobs_per_tenant=8) as api:
        submit = JobService.submit
        calls = []

        def third_fails(self: JobService, **kwargs: Any) -> Any:
            """Submits, except the third point, which meets a database outage."""
            calls.append(1)
            if len(calls) == 3:
                raise Unavailable("the database went away")
            return submit(self, **kwargs)

        monkeypatch.setattr(JobService, "submit", third_fails)
        response = await create(api)
        assert (response.status_code, response.json()["error"]["code"]) == (503, "service_unavailable")
        assert len(calls) == 3
        assert count(api, Job) == 0
        assert count(api, Sweep) == 0
