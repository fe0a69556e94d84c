"""A sweep's points on the real runner and database: the first measures the dense model, the next reuse it."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Sweep
from service.db.session import session_scope
from service.settings import Settings
from service.storage import ObjectStore
from service.storage.keys import artifact_key
from service.sweeps import repository
from tests.integration.job_rows import TENANT, factory, settings, store, submit, tiny
from tests.integration.tiny_job import TinyJob
from workers import runner

__all__ = ["factory", "settings", "store", "tiny"]  # fixtures, imported to be found


def report_of(store: ObjectStore, job_id: str) -> dict[str, Any]:
    """The job's stored report.json."""
    return dict(json.loads(b"".join(store.open_stream(artifact_key(TENANT, job_id, "report.json")))))


def sweep_of(factory: sessionmaker[Session], job_ids: list[str]) -> str:
    """Records a sweep whose points are these queued jobs, in order; returns its id."""
    sweep = Sweep(tenant=TENANT, model_id="m", dataset_id="d", config={})
    with session_scope(factory) as session:
        repository.create_sweep(session, sweep=sweep)
        for position, job_id in enumerate(job_ids):
            repository.add_point(session, sweep_id=sweep.id, position=position, job_id=job_id, target={})
    return sweep.id


def test_the_second_point_reuses_the_first_points_baseline(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    first, second, lone = (submit(factory, store, tiny) for _ in range(3))
    sweep_id = sweep_of(factory, [first, second])
    for job_id in (first, second, lone):
        assert runner.run_job(job_id, settings=settings) == "succeeded"
    reports = [report_of(store, job_id) for job_id in (first, second, lone)]
    assert reports[0]["baseline_shared"] == {"sweep_id": sweep_id, "measured_by": first, "reused": False}
    assert reports[1]["baseline_shared"] == {"sweep_id": sweep_id, "measured_by": first, "reused": True}
    assert "baseline_shared" not in reports[2]
    assert reports[0]["verification"]["baseline"] == reports[1]["verification"]["baseline"]
    with session_scope(factory) as session:
        found = repository.baseline_for_job(session, job_id=second)
    assert found is not None
    assert found[1] is not None
    assert found[1]["job_id"] == first


def test_a_stored_baseline_of_other_inputs_is_measured_again_and_kept(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    job_id = submit(factory, store, tiny)
    sweep_of(factory, [job_id])
    other = {"key": "0" * 64, "job_id": "another-job"}  # say, measured on another dataset
    with session_scope(factory) as session:
        assert repository.store_baseline(session, job_id=job_id, baseline=other)
    assert runner.run_job(job_id, settings=settings) == "succeeded"
    assert report_of(store, job_id)["baseline_shared"]["reused"] is False
    with session_scope(factory) as session:
        found = repository.baseline_for_job(session, job_id=job_id)
    assert found is not None
    assert found[1] == other  # the first stored stays
