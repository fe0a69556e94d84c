"""What a worker holds while it runs a job: the lease (fencing epoch and the job's fixed inputs), its log."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from service.db.session import session_scope
from workers.heartbeat import DB_ERRORS

__all__ = ["JobLog", "Lease", "retry_db", "worker_id"]

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """What a worker holds after claiming a job: the fencing epoch and the job's fixed inputs."""

    job_id: str
    tenant: str
    epoch: int
    attempt: int
    config: dict[str, Any]
    model_format: str
    dataset_format: str
    max_attempts: int = 1
    started_at: datetime | None = None  # when the job first started (max runtime counts from here)
    model_id: str | None = None  # the stored model it names (None: its own upload)
    dataset_id: str | None = None  # the stored dataset it names (None: its own upload)
    rerun_of: str | None = None  # the job this one reruns (its report is compared with ours)


class JobLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the job id (and the lease epoch once claimed)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        """Adds `job <id> [epoch N]:` in front of the message."""
        extra = self.extra or {}
        epoch = f" epoch {extra['epoch']}" if "epoch" in extra else ""
        return f"job {extra['job_id']}{epoch}: {msg}", kwargs


def worker_id() -> str:
    """Names this process for the job's `worker_id` column and events: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def retry_db(factory: sessionmaker[Session], write: Callable[[Session], T], *, for_s: float,
             what: str, jlog: logging.LoggerAdapter[logging.Logger] | None = None) -> T:
    """Runs `write` in one transaction, retrying while the database is unreachable, for up to `for_s`.

    A worker's last writes (its outcome, a release) must survive a database restart: the heartbeat keeps
    the lease alive meanwhile, and the reaper waits for workers to renew before it judges them.
    """
    deadline, delay = time.monotonic() + for_s, 0.25
    while True:
        try:
            with session_scope(factory) as session:
                return write(session)
        except DB_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                raise
            (jlog or log).warning("%s: database unavailable (%s); retrying in %.1f s", what,
                                  type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
