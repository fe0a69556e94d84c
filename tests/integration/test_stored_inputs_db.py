"""Stored inputs on each database (SQLite, and PostgreSQL where available): content addressing, the quota's
sum that counts a stored file once, and the in-use refusal, through the service and its queries."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import build_context
from service.db.models import Job
from service.db.session import session_scope
from service.errors import Conflict, NotFound
from service.jobs import repository
from service.jobs.service import StoredInput
from service.jobs.stored_inputs import StoredInputs
from service.settings import Settings
from service.storage import ObjectStore
from service.storage.keys import InputKind, input_key
from tests.integration.job_rows import factory, settings, store
from tests.integration.tiny_job import CONFIG

__all__ = ["factory", "settings", "store"]  # fixtures, imported to be found

TENANT = "stored-inputs"  # replaced per test by `_own_tenant`


@pytest.fixture(autouse=True)
def _own_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gives each test a tenant of its own: the session's PostgreSQL database is shared with the other
    integration tests, whose jobs (tenant t1) would count against these quotas and storage sums."""
    monkeypatch.setitem(globals(), "TENANT", f"stored-{uuid.uuid4().hex[:8]}")


def put(stored: StoredInputs, data: bytes, kind: InputKind = "dataset") -> tuple[str, bool]:
    """Stores `data` as the service does once an upload streamed in; returns (id, created)."""
    input_id, key = stored.new_key(TENANT)
    size, sha256 = stored.jobs.store.put_stream(key, [data])
    fmt = "parquet" if kind == "dataset" else "safetensors"
    upload = StoredInput(key=key, size=size, sha256=sha256, head=data[:64], format=fmt)
    row, created = stored.register(tenant=TENANT, kind=kind, input_id=input_id, upload=upload)
    return row.id, created


def add_job(factory: sessionmaker[Session], store: ObjectStore, *, dataset_id: str | None, size: int,
            status: str = "queued") -> str:
    """Inserts a job row with a 10-byte model of its own and a dataset of `size` bytes (stored or its own)."""
    job_id = str(uuid.uuid4())
    store.put_stream(input_key(TENANT, job_id, "model"), [b"m" * 10])
    with session_scope(factory) as session:
        repository.create_job(session, job=Job(
            id=job_id, tenant=TENANT, status=status, config={}, model_sha256="0" * 64, model_bytes=10,
            model_format="onnx", dataset_sha256="1" * 64, dataset_bytes=size, dataset_format="npz",
            dataset_id=dataset_id))
    return job_id


def used(factory: sessionmaker[Session]) -> int:
    """The tenant's storage use as the quota computes it."""
    with session_scope(factory) as session:
        return repository.stored_input_bytes(session, tenant=TENANT)


def test_stored_bytes_count_once_and_deletes_wait_for_unfinished_jobs(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore
) -> None:
    """Two uploads of the same bytes keep one row and one object; two jobs naming it add only their own
    model bytes; delete is 409 in_use until the last unfinished job naming it ends."""
    stored = StoredInputs(build_context(settings).jobs)
    data = b"d" * 1000
    first, created = put(stored, data)
    again, created_again = put(stored, data)
    assert (again, created, created_again) == (first, True, False)
    assert [row.id for row in stored.list(tenant=TENANT, kind="dataset", limit=10)] == [first]
    jobs = [add_job(factory, store, dataset_id=first, size=len(data)) for _ in range(2)]
    own = add_job(factory, store, dataset_id=None, size=500, status="succeeded")
    assert used(factory) == len(data) + 3 * 10 + 500
    with pytest.raises(Conflict) as refused:
        stored.delete(tenant=TENANT, kind="dataset", input_id=first)
    assert refused.value.code == "in_use"
    assert all(job_id in refused.value.message for job_id in jobs)
    with session_scope(factory) as session:
        for job_id in jobs:
            assert repository.request_cancel(session, tenant=TENANT, job_id=job_id) is not None
    stored.delete(tenant=TENANT, kind="dataset", input_id=first)
    assert stored.list(tenant=TENANT, kind="dataset", limit=10) == []
    assert used(factory) == 3 * 10 + 500
    assert own  # a job with its own upload still counts it


def test_a_job_cannot_name_an_input_deleted_after_it_was_resolved(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore
) -> None:
    """The job's insert share-locks its stored inputs and finds one gone: 404, and no job row is left."""
    jobs = build_context(settings.model_copy(update={"validate_uploads": False})).jobs
    stored = StoredInputs(jobs)
    model_id, _ = put(stored, b"weights", kind="model")
    dataset_id, _ = put(stored, b"rows" * 100)
    model, dataset = stored.for_job(tenant=TENANT, model_id=model_id, dataset_id=dataset_id)
    stored.delete(tenant=TENANT, kind="dataset", input_id=dataset_id)  # lands between resolve and insert
    with pytest.raises(NotFound):
        jobs.submit(tenant=TENANT, job_id=str(uuid.uuid4()), config_text=json.dumps(CONFIG), model=model,
                    dataset=dataset, idempotency_key=None)
    with session_scope(factory) as session:
        assert repository.count_unfinished_jobs(session, tenant=TENANT) == 0
