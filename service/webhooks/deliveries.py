"""The delivery log of a job's callback, as `GET /jobs/{id}/deliveries` shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, cast

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import WebhookDelivery
from service.db.session import session_scope
from service.webhooks import repository

__all__ = ["AttemptOut", "DeliveriesOut", "DeliveryOut", "deliveries_of"]


class AttemptOut(BaseModel):
    """One POST: when, the receiver's status (null when none came back), why it failed, how long it took."""

    at: datetime
    status: int | None
    error: str | None
    duration_ms: float


class DeliveryOut(BaseModel):
    """The callback of a finished job: its state, the next retry, and every attempt."""

    id: str = Field(description="also sent as the Secateur-Delivery header: receivers drop duplicates by it")
    url: str
    event: str = Field(examples=["job.succeeded"])
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None = Field(description="null once delivered or given up")
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None
    log: list[AttemptOut]


class DeliveriesOut(BaseModel):
    """A job's callback URL and its deliveries (none until the job ends; then one)."""

    webhook_url: str | None
    deliveries: list[DeliveryOut]


def _out(row: WebhookDelivery) -> DeliveryOut:
    """Builds the API view of a delivery row."""
    state = cast(Literal["pending", "delivered", "failed"], row.state)
    return DeliveryOut(id=row.id, url=row.url, event=row.event, state=state, attempts=row.attempts,
                       next_attempt_at=row.next_attempt_at if state == "pending" else None,
                       delivered_at=row.delivered_at, last_status=row.last_status, last_error=row.last_error,
                       log=[AttemptOut(**entry) for entry in row.log])


def deliveries_of(sessions: sessionmaker[Session], *, job_id: str, webhook_url: str | None) -> DeliveriesOut:
    """Returns the delivery log of a job the caller may see (the route checks the tenant first)."""
    with session_scope(sessions) as session:
        rows = repository.list_deliveries(session, job_id=job_id)
        return DeliveriesOut(webhook_url=webhook_url, deliveries=[_out(row) for row in rows])
