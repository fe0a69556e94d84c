"""Jobs as the API leaves them (inputs in storage, a queued row) and fixtures to run them in-process.

Shared by the runner and recovery tests: settings on SQLite and PostgreSQL, the tiny MLP job's files, and
helpers that read the job row and its events back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.db.migrate import upgrade_head
from service.db.models import Job, JobEvent
from service.db.session import session_scope
from service.jobs import repository
from service.settings import Settings
from service.storage import ObjectStore, make_store
from service.storage.keys import input_key
from tests.integration.tiny_job import TinyJob, write_tiny_job
from workers import runner

__all__ = ["TENANT", "event_kinds", "events", "factory", "fetch", "settings", "store", "submit", "tiny"]

TENANT = "t1"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyJob:
    """The tiny MLP job's input files."""
    return write_tiny_job(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings on a migrated database of each kind, local objects, and unthrottled progress writes."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite" else None
    if url is None:
        url = request.getfixturevalue("postgres_url")
    upgrade_head(url=url)
    yield Settings(data_dir=tmp_path, database_url=url, storage_url=f"file://{tmp_path / 'objects'}",
                   progress_write_interval_s=0.0)
    runner.dispose_engines()


@pytest.fixture
def factory(settings: Settings) -> sessionmaker[Session]:
    """The runner's own session factory for these settings."""
    return runner.session_factory(settings)


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    """The settings' object store."""
    return make_store(settings)


def submit(factory: sessionmaker[Session], store: ObjectStore, job: TinyJob, *, model: Path | None = None,
           config: dict[str, Any] | None = None, max_attempts: int = 3) -> str:
    """Stores the inputs and inserts a queued job row, as the API does; returns the job id."""
    job_id = str(uuid.uuid4())
    model_size, model_sha = store.put_file(input_key(TENANT, job_id, "model"), model or job.model)
    data_size, data_sha = store.put_file(input_key(TENANT, job_id, "dataset"), job.dataset)
    with session_scope(factory) as session:
        repository.create_job(session, job=Job(
            id=job_id, tenant=TENANT, config=config or json.loads(job.config), max_attempts=max_attempts,
            model_sha256=model_sha, model_bytes=model_size, model_format="safetensors",
            dataset_sha256=data_sha, dataset_bytes=data_size, dataset_format="npz"))
    return job_id


def fetch(factory: sessionmaker[Session], job_id: str) -> Job:
    """Reads the job row afresh."""
    with session_scope(factory) as session:
        job = repository.get_job_any_tenant(session, job_id=job_id)
        assert job is not None
        return job


def events(factory: sessionmaker[Session], job_id: str) -> list[JobEvent]:
    """Returns the job's events in the order they were recorded."""
    with session_scope(factory) as session:
        return repository.list_events(session, job_id=job_id)


def event_kinds(factory: sessionmaker[Session], job_id: str) -> list[str]:
    """Returns the kinds of the job's events in order, stage milestones left out."""
    return [e.kind for e in events(factory, job_id) if e.kind != "stage"]
