"""The job runner against a real database (SQLite, and PostgreSQL where available) and a real object store.

Jobs are inserted the way the API does (inputs in storage, a queued row), then run in-process with the
real engine: the runner's contract is the rows, events and objects it leaves behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Job
from service.db.session import session_scope
from service.jobs import repository
from service.settings import Settings
from service.storage import ObjectStore
from service.storage.keys import ARTIFACT_NAMES, artifact_key, checkpoint_key, input_key
from tests.integration.job_rows import TENANT, event_kinds, factory, fetch, settings, store, submit, tiny
from tests.integration.tiny_job import TinyJob
from workers import runner
from workers.compression.errors import JobStopped
from workers.compression.hooks import Progress

__all__ = ["factory", "settings", "store", "tiny"]  # fixtures, imported to be found


def test_job_runs_to_succeeded_with_artifacts_and_events(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    """A queued job is claimed, compressed, its three artifacts stored, and it ends succeeded with metrics."""
    job_id = submit(factory, store, tiny)
    assert runner.run_job(job_id, settings=settings, actor="test-worker") == "succeeded"
    job = fetch(factory, job_id)
    assert (job.status, job.epoch, job.attempt, job.worker_id) == ("succeeded", 1, 1, "test-worker")
    assert job.error_code is None
    assert job.finished_at is not None
    assert job.stage == "uploading"
    report = json.loads(b"".join(store.open_stream(artifact_key(TENANT, job_id, "report.json"))))
    assert job.metrics is not None
    assert job.metrics["pruned"]["ort_accuracy"] == report["pruned"]["ort_accuracy"]
    assert job.metrics["verification_passed"] is True
    assert all(store.exists(artifact_key(TENANT, job_id, name)) for name in ARTIFACT_NAMES)
    # The engine checkpointed its one epoch through the storage adapter; the job's end removed it.
    assert event_kinds(factory, job_id) == ["claimed", "preflight_passed", "checkpoint", "succeeded"]
    assert job.checkpoint_key is None
    assert not store.exists(f"{checkpoint_key(TENANT, job_id)}.1.1")
    assert (report["attempt"], report["resumed_from"], report["oom_retries"]) == (1, None, [])
    # A second wake-up for the same job is a no-op: the claim refuses a job that is not queued.
    assert runner.run_job(job_id, settings=settings) is None
    assert fetch(factory, job_id).epoch == 1


def test_user_error_fails_with_its_code(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob, tmp_path: Path
) -> None:
    """A model file that is not a model fails the job with the engine's typed code, not internal_error."""
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"\x80\x04this is a pickle, not weights")
    job_id = submit(factory, store, tiny, model=bogus)
    assert runner.run_job(job_id, settings=settings) == "failed"
    job = fetch(factory, job_id)
    assert job.status == "failed"
    assert job.error_code in {"unsupported_model_format", "invalid_model"}
    assert job.error_message
    assert not store.exists(artifact_key(TENANT, job_id, "model.onnx"))


def test_unexpected_error_never_leaves_the_job_running(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    """An infrastructure failure (the dataset object vanished) ends the job failed/internal_error."""
    job_id = submit(factory, store, tiny)
    store.delete(input_key(TENANT, job_id, "dataset"))
    assert runner.run_job(job_id, settings=settings) == "failed"
    job = fetch(factory, job_id)
    assert (job.status, job.error_code) == ("failed", "internal_error")
    assert event_kinds(factory, job_id) == ["claimed", "failed"]


def test_cancel_is_honoured_at_the_next_progress_write(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    """A job marked cancelling after its claim stops at the next progress write and ends cancelled."""
    job_id = submit(factory, store, tiny)
    with session_scope(factory) as session:
        lease = repository.claim_job(session, job_id=job_id, worker_id="w")
        assert lease is not None
        epoch = lease.epoch
        repository.request_cancel(session, tenant=TENANT, job_id=job_id)
    jlog = runner.JobLog(runner.log, {"job_id": job_id})
    writer = runner.ProgressWriter(_lease(job_id, epoch), factory, 0.0, jlog)
    with pytest.raises(JobStopped) as stopped:
        writer(Progress(stage="loading", fraction=0.0))
    assert stopped.value.reason == runner.CANCEL_REQUESTED


def test_a_worker_that_lost_its_lease_writes_nothing(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    """After a re-claim (epoch 2), the first owner's progress and checkpoint writes are refused."""
    job_id = submit(factory, store, tiny)
    with session_scope(factory) as session:
        first = repository.claim_job(session, job_id=job_id, worker_id="old")
        assert first is not None
        old_epoch = first.epoch
        # What the reaper does (issue 5): the job goes back to queued and another worker claims it.
        session.execute(Job.__table__.update().where(Job.id == job_id).values(status="queued"))
        assert repository.claim_job(session, job_id=job_id, worker_id="new") is not None
    jlog = runner.JobLog(runner.log, {"job_id": job_id})
    stale = _lease(job_id, old_epoch)
    with pytest.raises(JobStopped) as stopped:
        runner.ProgressWriter(stale, factory, 0.0, jlog)(Progress(stage="pruning", fraction=0.1))
    assert stopped.value.reason == runner.LEASE_LOST
    current = runner.StorageCheckpoints(_lease(job_id, old_epoch + 1), store, factory, "new", jlog)
    current.save(b"new-state", phase="finetune", epoch=1)
    zombie = runner.StorageCheckpoints(stale, store, factory, "old", jlog)
    with pytest.raises(JobStopped):
        zombie.save(b"old-state", phase="finetune", epoch=2)
    assert current.load() == b"new-state"
    assert fetch(factory, job_id).checkpoint_key == f"{checkpoint_key(TENANT, job_id)}.{old_epoch + 1}.1"
    assert fetch(factory, job_id).stage is None  # the stale progress write changed nothing


def test_progress_writes_are_throttled(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    """Within the interval only stage changes and epoch ends reach the database."""
    job_id = submit(factory, store, tiny)
    with session_scope(factory) as session:
        claimed = repository.claim_job(session, job_id=job_id, worker_id="w")
        assert claimed is not None
    now = [100.0]
    writer = runner.ProgressWriter(_lease(job_id, claimed.epoch), factory, 10.0,
                                   runner.JobLog(runner.log, {"job_id": job_id}), clock=lambda: now[0])
    writer(Progress(stage="finetuning", fraction=0.1, epoch=1, epochs=2, step=1, steps=10))
    writer(Progress(stage="finetuning", fraction=0.2, epoch=1, epochs=2, step=2, steps=10))
    assert fetch(factory, job_id).progress["step"] == 1  # throttled
    writer(Progress(stage="finetuning", fraction=0.5, epoch=1, epochs=2, step=5, steps=10, epoch_end=True))
    assert fetch(factory, job_id).progress["step"] == 5  # an epoch end always goes through
    now[0] += 10.0
    writer(Progress(stage="finetuning", fraction=0.6, epoch=2, epochs=2, step=6, steps=10))
    progress = fetch(factory, job_id).progress
    assert progress["step"] == 6
    assert progress["eta_s"] is not None
    assert progress["eta_s"] > 0


def _lease(job_id: str, epoch: int) -> runner.Lease:
    """A lease on the tiny job at a given epoch."""
    return runner.Lease(job_id, TENANT, epoch, 1, {}, "safetensors", "npz")


def test_run_job_ends_cancelled_when_cancelled_mid_run(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancel that arrives while the engine runs ends the job `cancelled`, with no artifacts."""
    def cancel_then_progress(*args: object) -> dict[str, object]:
        """Stands in for the engine's first training step: the user cancels, then progress is reported."""
        progress = args[5]
        assert isinstance(progress, runner.ProgressWriter)
        with session_scope(factory) as session:
            repository.request_cancel(session, tenant=TENANT, job_id=progress.lease.job_id)
        progress(Progress(stage="pruning", fraction=0.1))
        raise AssertionError("the progress write should have stopped the job")

    monkeypatch.setattr(runner, "_compress", cancel_then_progress)
    job_id = submit(factory, store, tiny)
    assert runner.run_job(job_id, settings=settings) == "cancelled"
    job = fetch(factory, job_id)
    assert (job.status, job.error_code) == ("cancelled", None)
    assert event_kinds(factory, job_id) == ["claimed", "preflight_passed", "cancelled"]
    assert not store.exists(artifact_key(TENANT, job_id, "model.onnx"))
