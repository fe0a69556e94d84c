"""The database schema: jobs (the queue of record) and their append-only event log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = ["DELIVERY_STATES", "INPUT_KINDS", "STATUSES", "ApiKey", "Base", "InputFile", "Job", "JobEvent",
           "Sweep", "SweepPoint", "UTCDateTime", "WebhookDelivery", "WebhookSecret", "new_job_id", "utcnow"]

STATUSES: tuple[str, ...] = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


def utcnow() -> datetime:
    """Returns the current time, timezone-aware in UTC (the only kind of time this schema stores)."""
    return datetime.now(UTC)


def new_job_id() -> str:
    """Returns a fresh, unguessable job id (a random UUID4 as text)."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Converts an aware datetime to UTC; naive ones are refused rather than guessed."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use service.db.models.utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attaches UTC to the naive values SQLite returns."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base; JSON columns use the portable JSON type (json on PostgreSQL, text on SQLite)."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


_status_list = ", ".join(f"'{s}'" for s in STATUSES)


class Job(Base):
    """One compression job: its inputs, state, lease (epoch, worker, heartbeat) and outcome."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_status_list})", name="ck_jobs_status"),
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        # Listing: a tenant's jobs newest first, keyset-paginated on (created_at, id).
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        # The reaper (issue 5): running jobs by heartbeat age, queued jobs by age.
        Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_job_id)
    tenant: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    config: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any] | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    epoch: Mapped[int] = mapped_column(Integer, default=0)  # fencing token: +1 at every claim
    worker_id: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None]
    checkpoint_key: Mapped[str | None] = mapped_column(String(512))
    model_sha256: Mapped[str] = mapped_column(String(64))
    model_bytes: Mapped[int] = mapped_column(BigInteger)
    model_format: Mapped[str] = mapped_column(String(16))
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    dataset_bytes: Mapped[int] = mapped_column(BigInteger)
    dataset_format: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Stored inputs and reruns (issue 14, migration 0003): null for a job whose files came with its POST.
    model_id: Mapped[str | None] = mapped_column(String(36), index=True)
    dataset_id: Mapped[str | None] = mapped_column(String(36), index=True)
    rerun_of: Mapped[str | None] = mapped_column(String(36), index=True)


class JobEvent(Base):
    """One append-only record of something that happened to a job (who, what, under which epoch, when)."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key (`sk_<id>_<secret>`): its tenant and the sha256 of its secret (never the secret itself)."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_tenant", "tenant"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the public part, shown in listings
    tenant: Mapped[str] = mapped_column(String(64))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Sweep(Base):
    """A sweep (issue 14): one model, one dataset and one config tried at several targets, one job each.

    `baseline` holds the dense model's measurement, written by the first of its jobs to measure it and
    reused by the others (workers/sweep_baseline.py); its status is derived from its points' jobs.
    """

    __tablename__ = "sweeps"
    __table_args__ = (Index("ix_sweeps_tenant_created", "tenant", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_job_id)
    tenant: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(String(36))
    dataset_id: Mapped[str] = mapped_column(String(36))
    config: Mapped[dict[str, Any]]
    baseline: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    cancelled_at: Mapped[datetime | None]


class SweepPoint(Base):
    """One point of a sweep: its position, its target and the job that runs it."""

    __tablename__ = "sweep_points"
    __table_args__ = (UniqueConstraint("job_id", name="uq_sweep_points_job"),)

    sweep_id: Mapped[str] = mapped_column(String(36), ForeignKey("sweeps.id", ondelete="CASCADE"),
                                          primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"))
    target: Mapped[dict[str, Any]]


# --- Stored inputs (issue 14, migration 0003) ---
INPUT_KINDS: tuple[str, ...] = ("model", "dataset")


class InputFile(Base):
    """A tenant's reusable model or dataset (`POST /models`, `POST /datasets`), one row per content."""

    __tablename__ = "input_files"
    __table_args__ = (
        CheckConstraint("kind IN ('model', 'dataset')", name="ck_input_files_kind"),
        UniqueConstraint("tenant", "kind", "sha256", name="uq_input_files_tenant_kind_sha256"),
        Index("ix_input_files_tenant_kind_created", "tenant", "kind", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_job_id)
    tenant: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- Webhooks (issue 14, migration 0004) ---
DELIVERY_STATES: tuple[str, ...] = ("pending", "delivered", "failed")


class WebhookSecret(Base):
    """A tenant's webhook signing secret (HMAC needs it in clear; `secateur keys create` prints it)."""

    __tablename__ = "webhook_secrets"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """The callback of one finished job: where it goes, its state, its retry schedule and every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(f"state IN ({', '.join(repr(s) for s in DELIVERY_STATES)})",
                        name="ck_webhook_deliveries_state"),
        UniqueConstraint("job_id", name="uq_webhook_deliveries_job"),  # a job ends once: one delivery
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_job_id)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(String(32))  # job.succeeded | job.failed | job.cancelled
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    leased_until: Mapped[datetime | None]  # a sender holds it until then (several API replicas)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    log: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # one entry per attempt
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
