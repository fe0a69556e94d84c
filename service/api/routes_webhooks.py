"""`GET /jobs/{id}/deliveries`: the log of a job's webhook callback (attempts, statuses, next retry)."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import ContextDep, TenantDep
from service.jobs.schemas import ErrorBody
from service.webhooks.deliveries import DeliveriesOut, deliveries_of

__all__ = ["router"]

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}/deliveries", response_model=DeliveriesOut,
            responses={status: {"model": ErrorBody} for status in (401, 404, 503)})
def list_deliveries(job_id: str, context: ContextDep, tenant: TenantDep) -> DeliveriesOut:
    """Returns the job's callback URL and its delivery: state, attempts (time, HTTP status, error), next
    retry. Empty until the job ends; another tenant's job is a 404."""
    job = context.jobs.get(tenant=tenant, job_id=job_id)
    url = job.config.get("webhook_url")
    return deliveries_of(context.jobs.sessions, job_id=job.id, webhook_url=str(url) if url else None)
