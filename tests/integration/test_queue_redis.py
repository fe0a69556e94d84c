"""A real `secateur worker` process takes wake-ups from Redis; the claim makes duplicates harmless.

The job row lives in a real PostgreSQL database, its inputs in a local store shared with the worker.
The model is not a model, so the job fails fast with the engine's typed error, after a full round trip
(wake-up → worker child → claim → engine → fenced finish).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.db.migrate import upgrade_head
from service.db.models import Job
from service.db.session import make_engine, make_session_factory, session_scope
from service.jobs import repository
from service.queue import make_celery, send_wakeup
from service.settings import Settings
from service.storage import make_store
from service.storage.keys import input_key
from tests.integration.processes import maps_torch, secateur, secateur_env, spawn, stop, wait_until
from tests.integration.tiny_job import write_tiny_job

pytestmark = pytest.mark.integration
TENANT = "public"


@pytest.fixture
def settings(postgres_url: str, redis_url: str, tmp_path: Path) -> Settings:
    """Settings for PostgreSQL, Redis and a local object folder (both processes read the same env)."""
    upgrade_head(url=postgres_url)
    return Settings(data_dir=tmp_path, database_url=postgres_url, broker_url=redis_url,
                    storage_url=f"file://{tmp_path / 'objects'}")


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """A session factory on the test database."""
    engine = make_engine(settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


def test_worker_takes_wakeups_from_redis_and_runs_each_job_once(
    settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """Three wake-ups for one job: one claim, one terminal state; the worker's parent never loads torch."""
    tiny = write_tiny_job(tmp_path / "inputs")
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"PK\x03\x04 a zip is not a model")
    store = make_store(settings)
    job_id = str(uuid.uuid4())
    store.put_file(input_key(TENANT, job_id, "model"), bogus)
    store.put_file(input_key(TENANT, job_id, "dataset"), tiny.dataset)
    with session_scope(sessions) as session:
        repository.create_job(session, job=Job(
            id=job_id, tenant=TENANT, config=json.loads(tiny.config), model_sha256="0" * 64, model_bytes=1,
            model_format="safetensors", dataset_sha256="0" * 64, dataset_bytes=1, dataset_format="npz"))

    env = secateur_env({
        "SECATEUR_DATA_DIR": str(tmp_path), "SECATEUR_DATABASE_URL": settings.database_url,
        "SECATEUR_BROKER_URL": settings.broker_url, "SECATEUR_STORAGE_URL": settings.storage_url,
    })
    log = tmp_path / "worker.log"
    worker = spawn(secateur(["worker", "--loglevel=info"]), env=env, log=log, cwd=tmp_path)
    try:
        wait_until(lambda: True if "ready." in log.read_text() else None, timeout_s=30, what="worker ready",
                   alive=worker, log=log)
        producer = make_celery(settings)
        assert all(send_wakeup(job_id, celery=producer) for _ in range(3))

        def finished() -> Job | None:
            """The job once it is terminal."""
            with session_scope(sessions) as session:
                job = repository.get_job_any_tenant(session, job_id=job_id)
                return job if job is not None and job.status in {"succeeded", "failed", "cancelled"} else None

        job = wait_until(finished, timeout_s=40, what="the job to finish", alive=worker, log=log)
        assert job.status == "failed"
        # A ZIP model is read as a checkpoint archive, which the job's zoo architecture does not take.
        typed = {"invalid_config", "invalid_model", "unsupported_model_format"}
        assert job.error_code in typed, job.error_message
        # Let the two duplicate wake-ups be consumed too, then check they changed nothing.
        wait_until(lambda: True if log.read_text().count("duplicate wake-up ignored") == 2 else None,
                   timeout_s=30, what="the duplicate wake-ups", alive=worker, log=log)
        with session_scope(sessions) as session:
            kinds = [e.kind for e in repository.list_events(session, job_id=job_id) if e.kind != "stage"]
            again = repository.get_job_any_tenant(session, job_id=job_id)
        assert kinds == ["claimed", "preflight_refused", "failed"]
        assert again is not None
        assert (again.epoch, again.attempt) == (1, 1)
        assert not maps_torch(worker.pid), "the forking worker parent must never load torch"
        assert f"job {job_id}" in log.read_text()  # log lines carry the job id
    finally:
        stop(worker)
