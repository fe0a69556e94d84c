"""The lease guard of a running job: a heartbeat thread, and the one place that decides when the job stops.

Reasons to stop arrive from several sides: the heartbeat (a fenced UPDATE that matched nothing = the lease
is lost; the status says `cancelling`; the job ran past `max_runtime_s`), a progress write that sees the
same, and SIGTERM (the worker shuts down). The engine's progress callback asks `check` at every step and
gets `JobStopped` at the right boundary: at once for a cancel, a lost lease or the runtime limit; for a
shutdown, at the next epoch end (just after its checkpoint) unless half the grace period passes first.
If the engine does not come back to a step boundary within the grace period (a long export, a hung
kernel), the guard's thread calls `on_overdue(reason)`, which settles the job itself and ends the process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import utcnow
from service.db.session import session_scope
from service.jobs import repository
from service.settings import Settings
from workers.compression.errors import JobStopped
from workers.compression.hooks import Progress

__all__ = ["CANCEL_REQUESTED", "DB_ERRORS", "LEASE_LOST", "MAX_RUNTIME", "RESOURCES_EXCEEDED", "SHUTDOWN",
           "LeaseGuard", "stronger"]

LEASE_LOST = "lease_lost"  # another worker owns the job now (or it ended): write nothing more
CANCEL_REQUESTED = "cancel_requested"  # the user cancelled: end the job `cancelled`
MAX_RUNTIME = "max_runtime"  # the job ran too long: end it `failed/max_runtime`
RESOURCES_EXCEEDED = "resources_exceeded"  # past its memory ceiling or CPU budget (workers/ceiling.py)
SHUTDOWN = "shutdown"  # SIGTERM: checkpoint and hand the job back to the queue
# When reasons pile up, the stronger one wins: a lost lease forbids every write; a cancel or the runtime
# limit ends the job for good, which beats handing it back to the queue.
_STRENGTH = {SHUTDOWN: 0, MAX_RUNTIME: 1, RESOURCES_EXCEEDED: 1, CANCEL_REQUESTED: 2, LEASE_LOST: 3}
DB_ERRORS = (DBAPIError, PoolTimeout)

log = logging.getLogger(__name__)


def stronger(reason: str, other: str | None) -> str:
    """Returns whichever of two stop reasons wins (see _STRENGTH); `other` may be None."""
    return reason if other is None or _STRENGTH[reason] >= _STRENGTH[other] else other


class LeaseGuard:
    """Heartbeats one job's lease every `heartbeat_interval_s` and tells the engine when to stop."""

    def __init__(self, *, job_id: str, epoch: int, started_at: datetime, factory: sessionmaker[Session],
                 settings: Settings, on_overdue: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.job_id, self.epoch, self.started_at = job_id, epoch, started_at
        self.factory, self.settings, self.on_overdue, self.clock = factory, settings, on_overdue, clock
        self._reason: str | None = None
        self._since = 0.0  # when the first stop reason arrived (the grace period runs from there)
        self._lock = threading.RLock()  # re-entrant: SIGTERM's handler may interrupt `request` in one thread
        self._closed = threading.Event()
        self._overdue_sent = False
        self._db_down = False
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)
        self.step_cpu_s = time.process_time()  # the process's CPU time at the last progress event

    @property
    def reason(self) -> str | None:
        """Returns why the job must stop, or None while it may go on."""
        return self._reason

    def request(self, reason: str) -> None:
        """Asks the job to stop for `reason` (kept if stronger than an earlier one); safe from any thread."""
        if self._closed.is_set():
            return  # the job is settled: whatever the last heartbeat saw no longer matters
        with self._lock:
            if self._reason is None:
                self._since = self.clock()
                log.info("job %s epoch %d: stop requested (%s)", self.job_id, self.epoch, reason)
            self._reason = stronger(reason, self._reason)

    def check(self, event: Progress) -> None:
        """Raises JobStopped when the job must stop at this progress event (see the module docstring)."""
        self.step_cpu_s = time.process_time()
        reason = self._reason
        if reason is None:
            return
        if reason == SHUTDOWN and not (event.epoch_end or event.epoch == 0 or self._past_half_grace()):
            return  # let the epoch finish: its end writes a checkpoint the next attempt resumes from
        raise JobStopped(reason)

    def _past_half_grace(self) -> bool:
        """Tells whether half the shutdown grace period is gone (then any step boundary will do)."""
        return self.clock() - self._since >= self.settings.shutdown_grace_s / 2

    def beat(self) -> None:
        """Renews the lease once and turns what it learns into stop requests; waits a dead database out."""
        try:
            with session_scope(self.factory) as session:
                status = repository.heartbeat(session, job_id=self.job_id, epoch=self.epoch)
        except DB_ERRORS as exc:
            if not self._db_down:
                log.warning("job %s epoch %d: heartbeat failed (%s); retrying", self.job_id, self.epoch,
                            type(exc).__name__)
            self._db_down = True
            return
        if self._db_down:
            log.info("job %s epoch %d: heartbeat renewed after a database outage", self.job_id, self.epoch)
            self._db_down = False
        if status is None:
            self.request(LEASE_LOST)
        elif status == "cancelling":
            self.request(CANCEL_REQUESTED)
        if (utcnow() - self.started_at).total_seconds() > self.settings.max_runtime_s:
            self.request(MAX_RUNTIME)

    def _run(self) -> None:
        """The heartbeat thread: beat, then give up on a job that ignores its stop request too long."""
        while not self._closed.wait(self.settings.heartbeat_interval_s):
            self.beat()
            reason = self._reason
            if reason is None or self._overdue_sent:
                continue
            grace = self.settings.shutdown_grace_s if reason == SHUTDOWN else self.settings.stop_grace_s
            if self.clock() - self._since > grace:
                self._overdue_sent = True
                log.warning("job %s epoch %d: no step boundary within %.0f s of %s; stopping it", self.job_id,
                            self.epoch, grace, reason)
                self.on_overdue(reason)

    def start(self) -> LeaseGuard:
        """Starts the heartbeat thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stops the heartbeat thread (the job is settled or handed over); safe to call twice."""
        self._closed.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.settings.heartbeat_interval_s + 5)
