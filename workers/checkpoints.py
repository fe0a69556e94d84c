"""The engine's CheckpointStore: blobs in object storage, a fenced pointer to the newest one in the database.

Each save writes a new object (`<checkpoint key>.<lease epoch>.<n>`), then moves the fenced pointer to it
and records a `checkpoint` event (phase, epoch, key) in the same transaction; only then is the previous
object deleted. So the pointer always names a complete blob, the event log says what that blob holds, a
worker that lost its lease can neither move the pointer nor leave its blob behind, and a database outage
just keeps the previous checkpoint. `load` says which checkpoint a retried attempt resumes from.
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
        self.resumed_from: dict[str, Any] | None = None  # phase, epoch, attempt of the loaded checkpoint
        self._saves = 0

    def load(self) -> bytes | None:
        """Returns the checkpoint the job's pointer names (from any earlier attempt), or None."""
        with session_scope(self.factory) as session:
            job = repository.get_job_any_tenant(session, job_id=self.lease.job_id)
            key = job.checkpoint_key if job is not None else None
            events = repository.list_events(session, job_id=self.lease.job_id) if key is not None else []
        if key is None:
            return None
        try:
            blob = b"".join(self.store.open_stream(key))
        except ObjectNotFound:
            self.log.warning("checkpoint %s is missing from storage; starting without it", key)
            return None
        self.current = key
        saved = [e for e in events if e.kind == "checkpoint" and e.detail.get("key") == key]
        if saved:
            detail = saved[-1].detail
            self.resumed_from = {"phase": detail.get("phase"), "epoch": detail.get("epoch"),
                                 "attempt": detail.get("attempt")}
        self._record("resumed", {**(self.resumed_from or {}), "key": key})
        self.log.info("resuming from checkpoint %s (%s)", key, self.resumed_from)
        return blob

    def save(self, blob: bytes, *, phase: str, epoch: int) -> None:
        """Stores the blob under a new key of this lease, then moves the fenced DB pointer to it."""
        self._saves += 1
        key = f"{checkpoint_key(self.lease.tenant, self.lease.job_id)}.{self.lease.epoch}.{self._saves}"
        self.store.put_stream(key, [blob])
        detail = {"phase": phase, "epoch": epoch, "bytes": len(blob), "key": key,
                  "attempt": self.lease.attempt}
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
        previous, self.current = self.current, key
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
