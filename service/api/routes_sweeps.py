"""The /sweeps routes: a few lines each, delegating to the sweep service (which owns the transactions)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.api.bounded_pages import fit_in_bytes
from service.api.deps import JobsDep, TenantDep, validation_shares
from service.api.submit_guard import Admission, admit_submission
from service.errors import InvalidRequest
from service.jobs.schemas import ErrorBody
from service.sweeps.schemas import SweepCreated, SweepIn, SweepOut, SweepPage
from service.sweeps.service import SweepService

__all__ = ["router"]

router = APIRouter(prefix="/sweeps", tags=["sweeps"])


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Documents error responses (all in the `{"error": {...}}` shape) for OpenAPI."""
    return {status: {"model": ErrorBody} for status in statuses}


def _sweeps(jobs: JobsDep) -> SweepService:
    """Returns the sweep service over the app's job service."""
    return SweepService(jobs)


SweepsDep = Annotated[SweepService, Depends(_sweeps)]


@router.post("", status_code=202, response_model=SweepCreated,
             responses=_errors(400, 401, 403, 404, 408, 409, 413, 422, 429, 503))
async def create_sweep(
    body: SweepIn, request: Request, response: Response, sweeps: SweepsDep, tenant: TenantDep,
    admission: Annotated[Admission, Depends(admit_submission)],  # rate and quotas, as for POST /jobs
) -> SweepCreated:
    """Queues one job per target on a stored model and dataset; poll `GET /sweeps/{id}` for the front."""
    if admission.idempotency_key is not None:  # such a key names one job, never a sweep
        raise InvalidRequest("POST /sweeps takes no Idempotency-Key", code="invalid_sweep")
    # The first point's sandboxed file check takes one of the tenant's fair shares, as POST /jobs does.
    async with validation_shares(request).hold(tenant, sweeps.jobs.settings.sandbox_timeout_s):
        sweep_id, job_ids = await run_in_threadpool(lambda: sweeps.create(tenant=tenant, body=body))
    response.headers["Location"] = f"/sweeps/{sweep_id}"
    return SweepCreated(id=sweep_id, jobs=job_ids)


@router.get("", response_model=SweepPage, responses=_errors(401, 422, 503))
def list_sweeps(
    sweeps: SweepsDep, tenant: TenantDep, limit: Annotated[int, Query(ge=1, le=50)] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> SweepPage:
    """Lists the caller's sweeps, newest first; follow `next_cursor` for older ones.

    A page holds at most `limit` sweeps and at most `max_list_bytes` of JSON (then fewer, with a cursor).
    """
    page, next_cursor = sweeps.page(tenant=tenant, limit=limit, cursor=cursor)
    kept = fit_in_bytes(page, sweeps.jobs.settings.max_list_bytes)
    if kept < len(page):
        next_cursor = sweeps.cursor_after(page[kept - 1])
    return SweepPage(sweeps=page[:kept], next_cursor=next_cursor)


@router.get("/{sweep_id}", response_model=SweepOut, responses=_errors(401, 404, 503))
def get_sweep(sweep_id: str, sweeps: SweepsDep, tenant: TenantDep) -> SweepOut:
    """Returns a sweep: its status, the dense baseline, each point as it finishes, and the Pareto front."""
    return sweeps.get(tenant=tenant, sweep_id=sweep_id)


@router.post("/{sweep_id}/cancel", status_code=202, response_model=SweepOut,
             responses=_errors(401, 404, 409, 503))
def cancel_sweep(sweep_id: str, sweeps: SweepsDep, tenant: TenantDep) -> SweepOut:
    """Cancels every unfinished point of the sweep."""
    return sweeps.cancel(tenant=tenant, sweep_id=sweep_id)


@router.delete("/{sweep_id}", status_code=204, response_class=Response, responses=_errors(401, 404, 409, 503))
def delete_sweep(sweep_id: str, sweeps: SweepsDep, tenant: TenantDep) -> Response:
    """Deletes a finished sweep and its jobs' files (409 not_finished while a point runs)."""
    sweeps.delete(tenant=tenant, sweep_id=sweep_id)
    return Response(status_code=204)
