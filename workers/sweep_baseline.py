"""A sweep point's dense baseline, shared through its sweep's row: the first point to measure stores it.

The engine asks the cache before measuring the dense model (workers.compression.shared_baseline). With
one worker the sweep's points run one after another, so the first measures and every later one reuses;
points that start at the same moment on several workers may each measure (the first stored wins), which
costs time but never correctness. The database is only a convenience here: when it cannot be reached
the job measures for itself rather than fail.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db.session import session_scope
from service.sweeps import repository
from workers.heartbeat import DB_ERRORS
from workers.lease import JobLog

__all__ = ["SweepBaseline"]


class SweepBaseline:
    """The engine's BaselineCache for one job: its sweep's `baseline` column (none for a lone job)."""

    def __init__(self, factory: sessionmaker[Session], job_id: str, log: JobLog) -> None:
        self.factory, self.job_id, self.log = factory, job_id, log
        self.sweep_id: str | None = None  # set once `get` finds the job is a sweep's point
        self.measured_by: str | None = None  # the job whose measurement this one used

    def get(self) -> dict[str, Any] | None:
        """Returns the sweep's stored baseline record, if the job is a point and one is stored."""
        try:
            with session_scope(self.factory) as session:
                found = repository.baseline_for_job(session, job_id=self.job_id)
        except DB_ERRORS as exc:
            self.log.warning("could not read the sweep's baseline (%s); measuring it here", exc)
            return None
        if found is None:
            return None
        self.sweep_id, record = found
        self.measured_by = record.get("job_id") if record is not None else None
        return record

    def put(self, record: dict[str, Any]) -> None:
        """Stores this job's measurement on its sweep unless another point stored one first."""
        self.measured_by = self.job_id
        if self.sweep_id is None:
            return  # a lone job (or the sweep could not be read): nothing to share with
        try:
            with session_scope(self.factory) as session:
                baseline = {**record, "job_id": self.job_id}
                if repository.store_baseline(session, job_id=self.job_id, baseline=baseline):
                    self.log.info("stored the dense baseline for sweep %s", self.sweep_id)
        except DB_ERRORS as exc:
            self.log.warning("could not store the baseline for sweep %s (%s)", self.sweep_id, exc)

    def report(self) -> dict[str, Any] | None:
        """The report's `baseline_shared` block (None for a lone job): whose measurement this job used."""
        if self.sweep_id is None:
            return None
        return {"sweep_id": self.sweep_id, "measured_by": self.measured_by,
                "reused": self.measured_by not in (None, self.job_id)}
