"""The job repository's fenced writes and the state machine: a stale worker can change nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.db.migrate import upgrade_head
from service.db.models import Job, new_job_id
from service.db.session import make_engine, make_session_factory, session_scope
from service.jobs import repository
from service.jobs.states import TERMINAL, TRANSITIONS, can_transition, is_terminal, sources_of


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A migrated SQLite database."""
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    upgrade_head(engine)
    yield make_session_factory(engine)
    engine.dispose()


def new_job(sessions: sessionmaker[Session], tenant: str = "public") -> str:
    """Inserts a queued job and returns its id."""
    job_id = new_job_id()
    with session_scope(sessions) as session:
        repository.create_job(session, job=Job(
            id=job_id, tenant=tenant, config={}, model_sha256="a" * 64, model_bytes=1, model_format="onnx",
            dataset_sha256="b" * 64, dataset_bytes=1, dataset_format="npz"))
    return job_id


def status_of(sessions: sessionmaker[Session], job_id: str) -> str:
    """Reads a job's status."""
    with session_scope(sessions) as session:
        job = repository.get_job_any_tenant(session, job_id=job_id)
        assert job is not None
        return job.status


def test_claim_is_exclusive_and_bumps_epoch_and_attempt(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    with session_scope(sessions) as session:
        first = repository.claim_job(session, job_id=job_id, worker_id="w1")
        assert first is not None
        assert (first.status, first.epoch, first.attempt, first.worker_id) == ("running", 1, 1, "w1")
        assert first.started_at is not None
        assert first.heartbeat_at is not None
        assert first.started_at.tzinfo is not None  # timestamps come back timezone-aware from SQLite
    with session_scope(sessions) as session:
        assert repository.claim_job(session, job_id=job_id, worker_id="w2") is None  # duplicate wake-up
        assert repository.claim_job(session, job_id=new_job_id(), worker_id="w2") is None


def test_writes_under_a_stale_epoch_are_rejected(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    with session_scope(sessions) as session:
        job = repository.claim_job(session, job_id=job_id, worker_id="w1")
        assert job is not None
        epoch = job.epoch
    with session_scope(sessions) as session:
        assert repository.update_progress(session, job_id=job_id, epoch=epoch, stage="pruning",
                                          progress={"fraction": 0.1})
        assert not repository.update_progress(session, job_id=job_id, epoch=epoch + 1, stage="x", progress={})
        assert repository.heartbeat(session, job_id=job_id, epoch=epoch) == "running"
        assert repository.heartbeat(session, job_id=job_id, epoch=epoch - 1) is None
        assert repository.set_checkpoint(session, job_id=job_id, epoch=epoch, key="k")
        assert not repository.set_checkpoint(session, job_id=job_id, epoch=epoch - 1, key="stale")
        assert not repository.finish_job(session, job_id=job_id, epoch=epoch - 1, status="succeeded")
        job = repository.get_job_any_tenant(session, job_id=job_id)
        assert job is not None
        assert (job.stage, job.progress, job.checkpoint_key, job.status) == (
            "pruning", {"fraction": 0.1}, "k", "running")


def test_cancel_reaches_the_worker_through_its_heartbeat(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    with session_scope(sessions) as session:
        job = repository.claim_job(session, job_id=job_id, worker_id="w1")
        assert job is not None
        cancelling = repository.request_cancel(session, tenant="public", job_id=job_id)
        assert cancelling is not None
        assert cancelling.status == "cancelling"
        assert repository.request_cancel(session, tenant="other", job_id=job_id) is None
        assert repository.heartbeat(session, job_id=job_id, epoch=job.epoch) == "cancelling"
        assert repository.update_progress(session, job_id=job_id, epoch=job.epoch, stage="s", progress={})
        assert repository.finish_job(session, job_id=job_id, epoch=job.epoch, status="cancelled")
    assert status_of(sessions, job_id) == "cancelled"


def test_terminal_states_never_change(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    with session_scope(sessions) as session:
        job = repository.claim_job(session, job_id=job_id, worker_id="w1")
        assert job is not None
        assert repository.finish_job(session, job_id=job_id, epoch=job.epoch, status="succeeded",
                                     metrics={"accuracy": 1.0})
        assert not repository.finish_job(session, job_id=job_id, epoch=job.epoch, status="failed")
        assert not repository.update_progress(session, job_id=job_id, epoch=job.epoch, stage="s", progress={})
        assert repository.heartbeat(session, job_id=job_id, epoch=job.epoch) is None
        assert repository.claim_job(session, job_id=job_id, worker_id="w2") is None
        after = repository.request_cancel(session, tenant="public", job_id=job_id)
        assert after is not None
        assert after.status == "succeeded"
    with pytest.raises(ValueError, match="terminal"), session_scope(sessions) as session:
        repository.finish_job(session, job_id=job_id, epoch=1, status="running")


def test_queued_cancel_is_immediate_and_delete_needs_a_finished_job(sessions: sessionmaker[Session]) -> None:
    job_id, running = new_job(sessions), new_job(sessions)
    with session_scope(sessions) as session:
        assert repository.claim_job(session, job_id=running, worker_id="w") is not None
        assert not repository.delete_job(session, tenant="public", job_id=running)
        cancelled = repository.request_cancel(session, tenant="public", job_id=job_id)
        assert cancelled is not None
        assert cancelled.status == "cancelled"
        assert cancelled.finished_at is not None
        repository.record_event(session, job_id=job_id, epoch=0, kind="cancelled", actor="test")
        assert not repository.delete_job(session, tenant="other", job_id=job_id)
        assert repository.delete_job(session, tenant="public", job_id=job_id)
        assert repository.get_job_any_tenant(session, job_id=job_id) is None
        assert repository.list_events(session, job_id=job_id) == []


def test_events_are_appended_in_order(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    with session_scope(sessions) as session:
        for kind in ("created", "claimed", "finished"):
            repository.record_event(session, job_id=job_id, epoch=1, kind=kind, actor="t", detail={"k": kind})
    with session_scope(sessions) as session:
        events = repository.list_events(session, job_id=job_id)
        assert [e.kind for e in events] == ["created", "claimed", "finished"]
        assert [e.kind for e in repository.list_events(session, job_id=job_id, after_id=events[0].id)] == [
            "claimed", "finished"]


def test_state_machine_is_consistent() -> None:
    assert all(TRANSITIONS[state] == frozenset() for state in TERMINAL)
    assert all(is_terminal(s) == (s in TERMINAL) for s in TRANSITIONS)
    assert can_transition("queued", "running")
    assert not can_transition("succeeded", "running")
    assert not can_transition("cancelling", "running")
    assert sources_of("running") == {"queued"}
    assert sources_of("cancelling") == {"running"}
