"""Every query on webhook secrets and deliveries. Callers own the transaction; nothing here commits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session

from service.db.models import Job, WebhookDelivery, WebhookSecret
from service.db.session import rows_changed
from service.jobs.states import TERMINAL

__all__ = ["claim_due", "create_delivery", "finished_without_delivery", "get_secret", "list_deliveries",
           "put_secret", "record_attempt"]


def get_secret(session: Session, *, tenant: str) -> str | None:
    """Returns the tenant's webhook signing secret, or None when it has none."""
    row = session.get(WebhookSecret, tenant)
    return row.secret if row is not None else None


def put_secret(session: Session, *, tenant: str, secret: str) -> None:
    """Stores a tenant's first secret (flushed: a concurrent twin fails with IntegrityError)."""
    session.add(WebhookSecret(tenant=tenant, secret=secret))
    session.flush()


def finished_without_delivery(session: Session, *, since: datetime, limit: int) -> list[Job]:
    """Returns finished jobs (finished at or after `since`, oldest first) that name a webhook_url and have
    no delivery row yet."""
    url = Job.config["webhook_url"].as_string()
    delivered = exists().where(WebhookDelivery.job_id == Job.id)
    stmt = (select(Job)
            .where(Job.status.in_(TERMINAL), Job.finished_at >= since, url.is_not(None), ~delivered)
            .order_by(Job.finished_at, Job.id).limit(limit))
    return list(session.execute(stmt).scalars())


def create_delivery(session: Session, *, delivery: WebhookDelivery) -> None:
    """Inserts a delivery (flushed: a twin for the same job fails with IntegrityError)."""
    session.add(delivery)
    session.flush()


def claim_due(session: Session, *, now: datetime, lease_until: datetime, limit: int) -> list[WebhookDelivery]:
    """Leases up to `limit` pending deliveries that are due and not leased by another sender; returns them."""
    free = or_(WebhookDelivery.leased_until.is_(None), WebhookDelivery.leased_until < now)
    due = and_(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now, free)
    ids = list(session.execute(select(WebhookDelivery.id).where(due)
                               .order_by(WebhookDelivery.next_attempt_at).limit(limit)).scalars())
    claimed = []
    for delivery_id in ids:  # a conditional UPDATE each: two senders never hold the same delivery
        lease = update(WebhookDelivery).where(WebhookDelivery.id == delivery_id, due).values(
            leased_until=lease_until)
        if rows_changed(session, lease):
            claimed.append(delivery_id)
    if not claimed:
        return []
    stmt = select(WebhookDelivery).where(WebhookDelivery.id.in_(claimed)).execution_options(
        populate_existing=True)
    return list(session.execute(stmt).scalars())


def record_attempt(session: Session, *, delivery_id: str, lease_until: datetime,
                   values: dict[str, Any]) -> bool:
    """Writes an attempt's outcome if this sender still holds the lease; False when it lost it."""
    stmt = update(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                         WebhookDelivery.leased_until == lease_until).values(**values)
    return rows_changed(session, stmt) == 1



def list_deliveries(session: Session, *, job_id: str) -> list[WebhookDelivery]:
    """Returns a job's deliveries (at most one: a job ends once)."""
    return list(session.execute(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).scalars())
