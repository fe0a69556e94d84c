"""A route x principal matrix generated from the app's OpenAPI document: 0 cross-tenant 2xx.

Every operation in the document must have a recipe here (how to call it, which job state it needs), or
be listed as public; a new route without one fails `test_every_operation_is_covered`. Routes hidden from
the document must be known static shells. Principals: the owner, another tenant, no key, a revoked key,
a malformed key and a well-formed key with a wrong secret.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.api.app import create_app
from service.db.models import InputFile, Job, Sweep, new_job_id, utcnow
from service.db.session import session_scope
from service.jobs import repository
from service.settings import Settings
from service.storage.keys import ARTIFACT_NAMES, artifact_key, input_key, stored_input_key
from service.sweeps import repository as sweeps_repository
from tests.security.conftest import FIGURES, SecureApi
from tests.security.uploads import CONFIG

PRINCIPALS = ("owner", "other", "no_key", "revoked", "malformed", "wrong_secret")
UNAUTHENTICATED = ("no_key", "revoked", "malformed", "wrong_secret")


@dataclass(frozen=True)
class Recipe:
    """How to call one operation: the owner's job it acts on (its status), extra path params, a body."""

    job_status: str | None = None  # None: the operation names no job
    params: dict[str, str] = field(default_factory=dict)
    upload: bool = False
    dataset_file: bool = False  # POST /datasets/validate: one multipart `file`
    stored: str | None = None  # the owner's stored input ("model" or "dataset") it acts on, as {input_id}
    store_file: str | None = None  # POST /models or /datasets: one multipart `file` of this kind
    real_inputs: bool = False  # the planted job's inputs are real files (a rerun checks them)
    sweep: str | None = None  # the owner's sweep (one point: a job in this status), as {sweep_id}
    sweep_body: bool = False  # POST /sweeps: JSON naming the owner's stored inputs by id
    preflight_body: bool = False  # POST /preflight: JSON naming the owner's stored model by id


RECIPES: dict[tuple[str, str], Recipe] = {
    ("POST", "/jobs"): Recipe(upload=True),
    ("GET", "/jobs"): Recipe(),
    ("GET", "/jobs/{job_id}"): Recipe("queued"),
    ("DELETE", "/jobs/{job_id}"): Recipe("succeeded"),
    ("GET", "/jobs/{job_id}/report"): Recipe("succeeded"),
    ("GET", "/jobs/{job_id}/artifacts/{name}"): Recipe("succeeded", {"name": "model.onnx"}),
    ("POST", "/jobs/{job_id}/artifacts/{name}/link"): Recipe("succeeded", {"name": "model.onnx"}),
    ("POST", "/jobs/{job_id}/cancel"): Recipe("queued"),
    ("GET", "/jobs/{job_id}/events"): Recipe("succeeded"),  # SSE; a finished job's stream ends at once
    ("POST", "/datasets/validate"): Recipe(dataset_file=True),  # tenant-free facts, but keyed: it costs work
    ("POST", "/jobs/{job_id}/rerun"): Recipe("succeeded", real_inputs=True),
    ("POST", "/models"): Recipe(store_file="model"),
    ("GET", "/models"): Recipe(),
    ("GET", "/models/{input_id}"): Recipe(stored="model"),
    ("DELETE", "/models/{input_id}"): Recipe(stored="model"),
    ("POST", "/datasets"): Recipe(store_file="dataset"),
    ("GET", "/datasets"): Recipe(),
    ("GET", "/datasets/{input_id}"): Recipe(stored="dataset"),
    ("DELETE", "/datasets/{input_id}"): Recipe(stored="dataset"),
    ("POST", "/sweeps"): Recipe(sweep_body=True),
    ("GET", "/sweeps"): Recipe(),
    ("GET", "/sweeps/{sweep_id}"): Recipe(sweep="queued"),
    ("POST", "/sweeps/{sweep_id}/cancel"): Recipe(sweep="queued"),
    ("DELETE", "/sweeps/{sweep_id}"): Recipe(sweep="succeeded"),
    ("GET", "/jobs/{job_id}/deliveries"): Recipe("succeeded"),
    ("POST", "/preflight"): Recipe(preflight_body=True),
}
# Operations that need no key: probes and Prometheus metrics (operator data, no tenant's jobs).
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
# Operations whose credential is a link minted by a RECIPES operation (tests/service/test_download_links.py).
LINKED = {("GET", "/jobs/{job_id}/artifacts/{name}/download")}
# Routes kept out of the document: the docs themselves and the dashboard's static shell, which holds no
# data (it fetches everything from the API with the user's key).
HIDDEN = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/", "/jobs/{job_id}/report.html",
          "/static/{name}"}


def operations(app: FastAPI) -> dict[tuple[str, str], dict[str, Any]]:
    """Every (METHOD, path) in the app's OpenAPI document, with its operation object."""
    return {(method.upper(), path): op for path, ops in app.openapi()["paths"].items()
            for method, op in ops.items()}


def served_routes(app: FastAPI) -> list[tuple[str, bool]]:
    """(path, in the schema) of every route the app serves, included routers' routes too."""
    out = []
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        for item in contexts() if callable(contexts) else [route]:
            out.append((str(getattr(item, "path", "")), bool(getattr(item, "include_in_schema", True))))
    return out


def test_every_operation_is_covered(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, auth="keys"))
    ops = operations(app)
    uncovered = set(ops) - set(RECIPES) - PUBLIC - LINKED
    assert uncovered == set(), "add these operations to RECIPES (or PUBLIC, if they hold no tenant data)"
    for key, op in ops.items():
        secured = bool(op.get("security"))
        listed = key in RECIPES or key in LINKED
        assert secured == listed, f"{key}: declares security={secured} but is listed otherwise"
    hidden = {path for path, in_schema in served_routes(app) if not in_schema}
    assert hidden <= HIDDEN, f"routes hidden from OpenAPI escape the matrix: {sorted(hidden - HIDDEN)}"


def app_of(api: SecureApi) -> FastAPI:
    """The FastAPI app behind a test client."""
    transport = api.client._transport
    assert isinstance(transport, httpx.ASGITransport)
    app: FastAPI = transport.app  # type: ignore[assignment]
    return app


def plant_job(api: SecureApi, tenant: str, status: str, real_inputs: bool = False) -> str:
    """Inserts a job of `tenant` in `status` with its stored inputs (and outputs when succeeded)."""
    job_id = new_job_id()
    store = api.context.store
    for kind in ("model", "dataset"):
        store.put_stream(input_key(tenant, job_id, kind), [input_bytes(kind) if real_inputs else b"input"])
    if status == "succeeded":
        for name in ARTIFACT_NAMES:
            store.put_stream(artifact_key(tenant, job_id, name), [b'{"ok": true}'])
    finished = utcnow() if status in ("succeeded", "failed", "cancelled") else None
    job = Job(id=job_id, tenant=tenant, status=status, config=CONFIG, progress={}, model_sha256="0" * 64,
              model_bytes=5, model_format="onnx", dataset_sha256="0" * 64, dataset_bytes=5,
              dataset_format="npz", finished_at=finished)
    with session_scope(api.context.jobs.sessions) as session:
        repository.create_job(session, job=job)
    return job_id


def input_bytes(kind: str) -> bytes:
    """A real, small model (ONNX) or dataset (.npz) file."""
    from tests.security.uploads import linear_onnx, npz_dataset

    return linear_onnx().SerializeToString() if kind == "model" else npz_dataset()


def plant_input(api: SecureApi, tenant: str, kind: str) -> str:
    """Inserts a stored model or dataset of `tenant` with bytes of its own (no twin); returns its id."""
    input_id = new_job_id()
    size, sha256 = api.context.store.put_stream(stored_input_key(tenant, input_id), [input_id.encode()])
    row = InputFile(id=input_id, tenant=tenant, kind=kind, sha256=sha256, bytes=size,
                    format="onnx" if kind == "model" else "npz")
    with session_scope(api.context.jobs.sessions) as session:
        session.add(row)
    return input_id


def input_state(api: SecureApi, input_id: str) -> tuple[str, str] | None:
    """Returns (tenant, kind) of a stored input whatever its tenant, None when it does not exist."""
    with session_scope(api.context.jobs.sessions) as session:
        row = session.get(InputFile, input_id)
        return None if row is None else (row.tenant, row.kind)


def plant_sweep(api: SecureApi, tenant: str, status: str) -> str:
    """Inserts a sweep of `tenant` whose one point is a planted job in `status`; returns the sweep's id."""
    sweep = Sweep(tenant=tenant, model_id=new_job_id(), dataset_id=new_job_id(), config=CONFIG)
    job_id = plant_job(api, tenant, status)
    with session_scope(api.context.jobs.sessions) as session:
        sweeps_repository.create_sweep(session, sweep=sweep)
        sweeps_repository.add_point(session, sweep_id=sweep.id, position=0, job_id=job_id, target={})
    return sweep.id


def sweep_state(api: SecureApi, sweep_id: str) -> tuple[str, str] | None:
    """Returns (tenant, its point's job status) of a sweep whatever its tenant; None when there is none."""
    with session_scope(api.context.jobs.sessions) as session:
        sweep = session.get(Sweep, sweep_id)
        points = sweeps_repository.points_with_jobs(session, sweep_ids=[sweep_id])
        return None if sweep is None else (sweep.tenant, points[0][1].status)


def job_state(api: SecureApi, job_id: str) -> tuple[str, str] | None:
    """Returns (tenant, status) of a job whatever its tenant, None when it does not exist."""
    with session_scope(api.context.jobs.sessions) as session:
        job = repository.get_job_any_tenant(session, job_id=job_id)
        return None if job is None else (job.tenant, job.status)


async def call(api: SecureApi, key: tuple[str, str], principal: str, job_id: str | None) -> httpx.Response:
    """Calls one operation as one principal, on `job_id` when the operation names a job."""
    method, path = key
    recipe = RECIPES[key]
    url = path.format(job_id=job_id, input_id=job_id, sweep_id=job_id, **recipe.params)
    if recipe.sweep_body:  # the owner's stored inputs (stored again: the same bytes keep their ids)
        ids = {}
        for kind in ("model", "dataset"):
            stored = await api.client.post(f"/{kind}s", files={"file": ("f.bin", input_bytes(kind))},
                                           headers=api.auth("owner"))
            ids[f"{kind}_id"] = stored.json()["id"]
        body = {**ids, "config": {k: v for k, v in CONFIG.items() if k != "target"},
                "targets": [{"pruning_ratio": 0.5}]}
        return await api.client.post(url, json=body, headers=api.auth(principal))
    if recipe.preflight_body:  # the owner's stored model, checked as a sparsity job on it would be
        stored = await api.client.post("/models", files={"file": ("m.onnx", input_bytes("model"))},
                                       headers=api.auth("owner"))
        config = {"method": "magnitude", "target": {"sparsity": 0.5}}
        body = {"model_id": stored.json()["id"], "config": config}
        return await api.client.post(url, json=body, headers=api.auth(principal))
    if recipe.store_file:
        files = {"file": ("f.bin", input_bytes(recipe.store_file))}
        return await api.client.post(url, files=files, headers=api.auth(principal))
    if recipe.dataset_file:
        from tests.security.uploads import npz_dataset

        files = {"file": ("d.npz", npz_dataset())}
        return await api.client.post(url, files=files, headers=api.auth(principal))
    if recipe.upload:
        from tests.security.uploads import linear_onnx, npz_dataset

        files = {"model": ("m.onnx", linear_onnx().SerializeToString()), "dataset": ("d.npz", npz_dataset())}
        return await api.client.post(url, files=files, data={"config": json.dumps(CONFIG)},
                                     headers=api.auth(principal))
    return await api.client.request(method, url, headers=api.auth(principal))


def _shape(response: httpx.Response, job_id: str) -> tuple[int, str]:
    """A response with the job id blanked: what must not differ between a hidden and a missing job."""
    return response.status_code, response.text.replace(job_id, "<id>")


async def check_cell(api: SecureApi, key: tuple[str, str], principal: str) -> tuple[int, bool]:
    """Calls one operation as one principal and checks the answer; returns (status, cross-tenant 2xx)."""
    recipe = RECIPES[key]
    job_id = plant_job(api, "acme", recipe.job_status, recipe.real_inputs) if recipe.job_status else None
    if recipe.stored:  # the owner's stored input stands where a job would
        job_id = plant_input(api, "acme", recipe.stored)
    if recipe.sweep:  # and so does the owner's sweep
        job_id = plant_sweep(api, "acme", recipe.sweep)
    response = await call(api, key, principal, job_id)
    status = response.status_code
    label = f"{key} as {principal}: {status} {response.text[:200]}"
    if principal in UNAUTHENTICATED:
        assert status == 401, label
        assert response.json()["error"]["code"] == "unauthorized", label
        assert response.headers["www-authenticate"] == "Bearer", label
    elif principal == "owner":
        assert 200 <= status < 300, label
    elif job_id is not None:  # another tenant, on the owner's job: exactly what a missing job gets
        missing = str(uuid.uuid4())
        assert _shape(response, job_id) == _shape(await call(api, key, principal, missing), missing), label
        assert status == 404, label
        if recipe.stored:
            assert input_state(api, job_id) == ("acme", recipe.stored), f"{label}: the input changed"
        elif recipe.sweep:
            assert sweep_state(api, job_id) == ("acme", recipe.sweep), f"{label}: the sweep changed"
        else:
            assert job_state(api, job_id) == ("acme", recipe.job_status), f"{label}: the job changed"
        return status, 200 <= status < 300
    elif key == ("POST", "/datasets/validate"):  # any tenant may check its own file
        assert status == 200, label
    elif recipe.store_file:  # another tenant's upload becomes its own stored input
        assert status in (200, 201), label
        assert input_state(api, response.json()["id"]) == ("globex", recipe.store_file), label
    elif key in (("GET", "/models"), ("GET", "/datasets")):  # only the caller's own stored inputs
        assert status == 200, label
        owners = {(input_state(api, item["id"]) or ("?",))[0] for item in response.json()["items"]}
        assert owners <= {"globex"}, label
    elif recipe.sweep_body or recipe.preflight_body:  # another tenant cannot name the owner's stored inputs
        assert status == 404, label
    elif key == ("GET", "/sweeps"):  # another tenant's listing holds only its own sweeps (none)
        assert status == 200, label
        assert response.json()["sweeps"] == [], label
    elif key == ("GET", "/jobs"):  # another tenant's listing holds only its own jobs
        assert status == 200, label
        assert {job_state(api, job["id"]) for job in response.json()["jobs"]} <= {("globex", "queued")}, label
    else:  # POST /jobs: another tenant's submission becomes its own job
        assert status == 202, label
        assert job_state(api, response.json()["id"]) == ("globex", "queued"), label
    return status, False


@pytest.mark.anyio
async def test_route_principal_matrix(secure_api: SecureApi) -> None:
    api, app = secure_api, app_of(secure_api)
    cells: dict[tuple[str, str, str], int] = {}
    cross_tenant_2xx = 0
    for key in [k for k in operations(app) if k in RECIPES]:
        for principal in PRINCIPALS:
            cells[(*key, principal)], crossed = await check_cell(api, key, principal)
            cross_tenant_2xx += crossed
    public = [k for k in operations(app) if k in PUBLIC]
    for method, path in public:
        statuses = {p: (await api.client.request(method, path, headers=api.auth(p))).status_code
                    for p in PRINCIPALS}
        assert set(statuses.values()) == {200}, (path, statuses)
    unauthenticated_not_401 = sum(1 for (_, _, p), s in cells.items() if p in UNAUTHENTICATED and s != 401)
    FIGURES.append(f"authz matrix: {len(cells) // len(PRINCIPALS)} secured operations x {len(PRINCIPALS)} "
                   f"principals = {len(cells)} cells (+{len(public)} public operations); cross-tenant 2xx: "
                   f"{cross_tenant_2xx}; unauthenticated answered other than 401: {unauthenticated_not_401}")
    assert cross_tenant_2xx == 0


@pytest.mark.anyio
async def test_presigned_urls_only_after_the_ownership_check(secure_api: SecureApi) -> None:
    """A store that presigns (S3) is asked for a URL only for the owner; the URL is short-lived."""
    api = secure_api
    asked: list[tuple[str, int]] = []

    def presign(key: str, expires_s: int) -> str:
        asked.append((key, expires_s))
        return f"https://objects.example/{key}?expires={expires_s}"

    api.context.store.presigned_get = presign  # type: ignore[method-assign]
    job_id = plant_job(api, "acme", "succeeded")
    url = f"/jobs/{job_id}/artifacts/model.onnx"
    assert (await api.client.get(url, headers=api.auth("other"))).status_code == 404
    assert (await api.client.get(url, headers=api.auth("no_key"))).status_code == 401
    assert asked == []
    response = await api.client.get(url, headers=api.auth("owner"))
    assert response.status_code == 307
    assert asked == [(artifact_key("acme", job_id, "model.onnx"), api.context.settings.presign_expires_s)]
    assert api.context.settings.presign_expires_s <= 3600


def test_s3_presigned_urls_are_get_only_and_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 store signs `get_object` (a GET-only URL) with the expiry it is given; no network needed."""
    from urllib.parse import parse_qs, urlparse

    from service.storage.s3 import S3Store, make_s3_client

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    store = S3Store(make_s3_client("http://127.0.0.1:9", "us-east-1"), "bucket", "p")
    url = store.presigned_get("tenants/acme/jobs/x/artifacts/model.onnx", 300)
    assert url is not None
    query = parse_qs(urlparse(url).query)
    assert query["X-Amz-Expires"] == ["300"]
    assert urlparse(url).path == "/bucket/p/tenants/acme/jobs/x/artifacts/model.onnx"
    with httpx.Client() as client:  # a PUT with a GET signature is refused by S3: the method is signed
        request = client.build_request("PUT", url)
    assert "X-Amz-SignedHeaders" in str(request.url)
