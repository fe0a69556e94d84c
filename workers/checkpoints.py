"""The engine's CheckpointStore: blobs in object storage, a fenced pointer to the newest one in the database.

Each save writes a new object (`<checkpoint key>.<lease epoch>.<n>`), then moves the fenced pointer to it
and records a `checkpoint` event (phase, epoch, key) in the same transaction; only then is the previous
object deleted. So the pointer always names a complete blob, the event log says what that blob holds, a
worker that lost its lease can neither move the pointer nor leave its blob behind, and a database outage
just keeps the previous checkpoint. `load` says which checkpoint a retried attempt resumes from, and the
batch size recorded with it lets the runner resume at the batch size that checkpoint was trained with
(the engine counts optimizer steps, so an epoch's steps must not change under a resumed run).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db.session import session_scope
from service.jobs import repository
from service.storage import ObjectNotFound, ObjectStore
from service.storage.keys import checkpoint_key
from workers.compression.errors import JobStopped
from workers.heartbeat import DB_ERRORS, LEASE_LOST
from workers.lease import JobLog, Lease

__all__ = ["StorageCheckpoints"]


class StorageCheckpoints:
    """The engine's CheckpointStore over object storage and the job row's fenced checkpoint pointer."""

    def __init__(self, lease: Lease, store: ObjectStore, factory: sessionmaker[Session], actor: str,
                 jlog: JobLog) -> None:
        self.lease, self.store, self.factory, self.actor, self.log = lease, store, factory, actor, jlog
        self.current: str | None = None  # the object the pointer names, as far as this attempt knows
        self.resumed_from: dict[str, Any] | None = None  # what the loaded blob holds (see `peek`)
        self.batch_size: int | None = None  # the batch size training runs at (recorded with each save)
        self._fresh = False  # set by `start_fresh`: ignore existing checkpoints until this attempt saves one
        self._saves = 0

    def peek(self) -> dict[str, Any] | None:
        """Returns what the pointed-at checkpoint holds (phase, epoch, attempt, batch_size), without it."""
        return None if self._fresh else self._pointer()[1]

    def start_fresh(self) -> None:
        """Makes `load` ignore existing checkpoints (they were taken at a batch size no longer used)."""
        self._fresh, self.resumed_from = True, None

    def _pointer(self) -> tuple[str | None, dict[str, Any] | None]:
        """Reads the job's checkpoint pointer and the event recorded with it (what that checkpoint holds)."""
        with session_scope(self.factory) as session:
            job = repository.get_job_any_tenant(session, job_id=self.lease.job_id)
            key = job.checkpoint_key if job is not None else None
            events = repository.list_events(session, job_id=self.lease.job_id) if key is not None else []
        saved = [e.detail for e in events if e.kind == "checkpoint" and e.detail.get("key") == key]
        if not saved:
            return key, None
        return key, {name: saved[-1].get(name) for name in ("phase", "epoch", "attempt", "batch_size")}

    def load(self) -> bytes | None:
        """Returns the checkpoint the job's pointer names (from any earlier attempt), or None."""
        if self._fresh:
            return None
        key, info = self._pointer()
        if key is None:
            return None
        try:
            blob = b"".join(self.store.open_stream(key))
        except ObjectNotFound:
            self.log.warning("checkpoint %s is missing from storage; starting without it", key)
            return None
        self.current, self.resumed_from = key, info
        self._record("resumed", {**(info or {}), "key": key})
        self.log.info("resuming from checkpoint %s (%s)", key, info)
        return blob

    def save(self, blob: bytes, *, phase: str, epoch: int) -> None:
        """Stores the blob under a new key of this lease, then moves the fenced DB pointer to it."""
        self._saves += 1
        key = f"{checkpoint_key(self.lease.tenant, self.lease.job_id)}.{self.lease.epoch}.{self._saves}"
        self.store.put_stream(key, [blob])
        detail = {"phase": phase, "epoch": epoch, "bytes": len(blob), "key": key,
                  "attempt": self.lease.attempt, "batch_size": self.batch_size}
        try:
            with session_scope(self.factory) as session:
                held = repository.set_checkpoint(session, job_id=self.lease.job_id, epoch=self.lease.epoch,
                                                 key=key)
                if held:
                    repository.record_event(session, job_id=self.lease.job_id, epoch=self.lease.epoch,
                                            kind="checkpoint", actor=self.actor, detail=detail)
        except DB_ERRORS as exc:
            self.store.delete(key)  # the pointer still names the previous checkpoint; resume from that one
            self.log.warning("checkpoint of %s epoch %d not recorded (database unavailable: %s)", phase,
                             epoch, type(exc).__name__)
            return
        if not held:
            self.store.delete(key)  # never leave a blob the job's pointer does not name
            raise JobStopped(LEASE_LOST)
        previous, self.current, self._fresh = self.current, key, False
        if previous is not None and previous != key:
            self.store.delete(previous)
        self.log.info("checkpoint saved (%s epoch %d, %d bytes)", phase, epoch, len(blob))

    def _record(self, kind: str, detail: dict[str, Any]) -> None:
        """Appends an event about this attempt's checkpoints (best effort: the log must not stop the job)."""
        try:
            with session_scope(self.factory) as session:
                repository.record_event(session, job_id=self.lease.job_id, epoch=self.lease.epoch, kind=kind,
                                        actor=self.actor, detail=detail)
        except DB_ERRORS as exc:
            self.log.warning("event %s not recorded (%s)", kind, type(exc).__name__)
