"""The reaper against a real database (SQLite, and PostgreSQL where available) and a real object store.

Jobs are put in the states a dead worker leaves behind (claimed, heartbeat in the past) by the same
repository calls a worker makes; the reaper's contract is the rows, events and wake-ups it leaves.
"""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Job, utcnow
from service.db.session import make_engine, make_session_factory, session_scope
from service.jobs import repository
from service.reaper import WORKER_LOST, Reaper
from service.settings import Settings
from service.storage import ObjectStore
from service.storage.keys import checkpoint_key
from tests.integration.job_rows import TENANT, event_kinds, factory, fetch, settings, store, submit, tiny
from tests.integration.tiny_job import TinyJob

__all__ = ["factory", "settings", "store", "tiny"]  # fixtures, imported to be found


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        """Returns the current fake time."""
        return self.now


def make_reaper(settings: Settings, factory: sessionmaker[Session], store: ObjectStore,
                clock: Clock | None = None) -> tuple[Reaper, list[str]]:
    """A reaper with stale_after 30 s and re-sends after 60 s, and the list its wake-ups go to."""
    woken: list[str] = []

    def wake(job_id: str) -> bool:
        """Records the wake-up instead of sending it."""
        woken.append(job_id)
        return True

    tuned = settings.model_copy(update={"stale_after_s": 30.0, "wakeup_resend_after_s": 60.0})
    return Reaper(tuned, factory, store, wake, actor="reaper-test", clock=clock or Clock()), woken


def claimed(factory: sessionmaker[Session], job_id: str, *, silent_for_s: float, times: int = 1) -> int:
    """Claims the job `times` times (requeueing in between) and backdates its heartbeat; returns the epoch."""
    with session_scope(factory) as session:
        for _ in range(times):
            session.execute(update(Job).where(Job.id == job_id).values(status="queued"))
            job = repository.claim_job(session, job_id=job_id, worker_id="dead-worker")
            assert job is not None
        past = utcnow() - timedelta(seconds=silent_for_s)
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=past))
        return job.epoch


def age(factory: sessionmaker[Session], job_id: str, seconds: float) -> None:
    """Makes a queued job look untouched for `seconds`."""
    with session_scope(factory) as session:
        past = utcnow() - timedelta(seconds=seconds)
        session.execute(update(Job).where(Job.id == job_id).values(updated_at=past))


def test_a_silent_worker_loses_its_job_to_the_queue(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    """A running job whose heartbeat is stale is requeued (epoch bumped) and woken; a fresh one is left."""
    reaper, woken = make_reaper(settings, factory, store)
    stale, fresh = submit(factory, store, tiny), submit(factory, store, tiny)
    epoch = claimed(factory, stale, silent_for_s=31)
    claimed(factory, fresh, silent_for_s=5)
    done = reaper.sweep()
    assert (done.requeued, woken) == ([stale], [stale])
    job = fetch(factory, stale)
    assert (job.status, job.epoch, job.attempt, job.worker_id) == ("queued", epoch + 1, 1, None)
    assert event_kinds(factory, stale) == ["requeued"]
    assert fetch(factory, fresh).status == "running"
    # The old lease's writes are refused now, and the job can be claimed again.
    with session_scope(factory) as session:
        assert repository.heartbeat(session, job_id=stale, epoch=epoch) is None
        again = repository.claim_job(session, job_id=stale, worker_id="w2")
        assert again is not None
        assert (again.epoch, again.attempt) == (epoch + 2, 2)


def test_attempts_used_up_fail_the_job_as_worker_lost(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    """The job's last allowed attempt going silent ends it failed/worker_lost, with no wake-up."""
    reaper, woken = make_reaper(settings, factory, store)
    job_id = submit(factory, store, tiny, max_attempts=2)
    claimed(factory, job_id, silent_for_s=31, times=2)
    assert reaper.sweep().failed == [job_id]
    job = fetch(factory, job_id)
    assert (job.status, job.error_code, job.attempt) == ("failed", WORKER_LOST, 2)
    assert job.error_message
    assert woken == []
    assert reaper.sweep().failed == []  # terminal states never change


def test_a_cancelling_job_whose_worker_died_ends_cancelled(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    """Nobody is left to honour the cancel, so the reaper ends the job `cancelled`."""
    reaper, _ = make_reaper(settings, factory, store)
    job_id = submit(factory, store, tiny)
    claimed(factory, job_id, silent_for_s=31)
    with session_scope(factory) as session:
        repository.request_cancel(session, tenant=TENANT, job_id=job_id)
    assert reaper.sweep().cancelled == [job_id]
    assert fetch(factory, job_id).status == "cancelled"


def test_lost_wakeups_are_resent_with_backoff(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    """A job queued past the resend age is woken again, once per period; the periods double (60, 120 s),
    so a backlog behind busy workers does not flood the broker."""
    reaper, woken = make_reaper(settings, factory, store)
    old, new = submit(factory, store, tiny), submit(factory, store, tiny)
    age(factory, old, 61)
    assert reaper.sweep().resent == [old]
    assert reaper.sweep().resent == []  # touched: not due again yet
    age(factory, old, 61)
    assert reaper.sweep().resent == []  # the second re-send waits 120 s
    age(factory, old, 121)
    assert reaper.sweep().resent == [old]
    assert woken == [old, old]
    assert event_kinds(factory, old).count("wakeup_resent") == 2
    assert fetch(factory, new).status == "queued"


def test_after_a_failed_send_every_waiting_job_is_woken_again(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    """A broker that refused a wake-up may come back empty: then the backoff is dropped until sends work."""
    reaper, woken = make_reaper(settings, factory, store)
    job_id = submit(factory, store, tiny)
    age(factory, job_id, 61)
    reaper.wake = lambda _: False  # the broker is down
    assert reaper.sweep().resent == [job_id]
    reaper.wake = lambda j: woken.append(j) is None
    age(factory, job_id, 61)  # due again after the base period, backoff or not
    assert reaper.sweep().resent == [job_id]
    assert woken == [job_id]


def test_concurrent_reapers_act_once(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    """Four replicas sweeping at once requeue a stale job once and re-send a lost wake-up once."""
    stale, unclaimed = submit(factory, store, tiny), submit(factory, store, tiny)
    claimed(factory, stale, silent_for_s=31)
    age(factory, unclaimed, 61)
    reapers = [make_reaper(settings, factory, store) for _ in range(4)]
    start = threading.Barrier(len(reapers))

    def sweep(reaper: Reaper) -> None:
        """Sweeps as soon as every replica is ready."""
        start.wait()
        reaper.tick()

    threads = [threading.Thread(target=sweep, args=(reaper,)) for reaper, _ in reapers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    woken = [job_id for _, calls in reapers for job_id in calls]
    assert sorted(woken) == sorted([stale, unclaimed])
    assert event_kinds(factory, stale).count("requeued") == 1
    assert event_kinds(factory, unclaimed).count("wakeup_resent") == 1


def test_finished_jobs_lose_their_checkpoints(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    """A job that ended with checkpoints left (e.g. cancelled while queued) has them deleted and cleared."""
    reaper, _ = make_reaper(settings, factory, store)
    job_id = submit(factory, store, tiny)
    epoch = claimed(factory, job_id, silent_for_s=0)
    key = f"{checkpoint_key(TENANT, job_id)}.{epoch}.1"
    store.put_stream(key, [b"state"])
    with session_scope(factory) as session:
        assert repository.set_checkpoint(session, job_id=job_id, epoch=epoch, key=key)
        assert repository.finish_job(session, job_id=job_id, epoch=epoch, status="cancelled")
    assert reaper.sweep().cleaned == [job_id]
    assert not store.exists(key)
    assert fetch(factory, job_id).checkpoint_key is None


def test_leases_are_not_judged_during_or_right_after_a_database_outage(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob
) -> None:
    """Workers could not heartbeat while the database was down: they get stale_after_s to renew."""
    clock = Clock()
    reaper, _ = make_reaper(settings, factory, store, clock)
    job_id = submit(factory, store, tiny)
    claimed(factory, job_id, silent_for_s=31)
    reaper.sessions = _dead_factory()
    reaper.tick()
    assert not reaper.judges_leases()
    reaper.sessions = factory
    reaper.tick()
    assert fetch(factory, job_id).status == "running"  # back, but within the grace period
    clock.now += 30.0
    assert reaper.judges_leases()
    reaper.tick()
    assert fetch(factory, job_id).status == "queued"


def _dead_factory() -> sessionmaker[Session]:
    """A session factory on a database that refuses connections (nothing listens on port 1)."""
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", connect_timeout_s=1)
    return make_session_factory(engine)
