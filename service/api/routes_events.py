"""`GET /jobs/{id}/events`: a job's progress as server-sent events, by polling its row.

Polling the database (a primary-key read every half second per open stream) needs no pub/sub server,
so it works the same on the embedded default and in production. Each event's data is the job exactly as
`GET /jobs/{id}` shows it (plus the worker's latest training metrics under `progress.metrics`), so a
client never has to merge partial updates. Event names: `status` (first event, and status changes),
`stage`, `progress`, `metrics` (anything else), and `end` for the terminal state, after which the stream
closes. The event id is the row's `updated_at` in microseconds: a client reconnecting with
`Last-Event-ID` gets the next state that differs from the one it saw (204 when that was the end).

Streams are a shared cost (a poll each every half second), so they are bounded: at most
`max_streams_per_tenant` open per tenant and `max_streams` per API process (429 `too_many_streams`
beyond), each lives at most `stream_max_s` (the client resumes with `Last-Event-ID`), and every
`stream_auth_recheck_s` an open stream re-checks its key: a revoked key's stream is closed (after a
comment line saying why, which clients ignore), and its reconnection gets the 401.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from starlette.types import Receive, Scope, Send

from service.api.deps import (
    AppContext,
    ContextDep,
    CredentialsDep,
    TenantDep,
    still_authorized,
    stream_shares,
)
from service.db.models import Job, utcnow
from service.errors import NotFound
from service.jobs.schemas import ErrorBody, job_out
from service.jobs.service import JobService
from service.jobs.states import TERMINAL

__all__ = ["router"]

# Read at call time, so tests (and operators patching a module) can shorten them.
POLL_S = 0.5  # how often an open stream re-reads the job row
HEARTBEAT_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
RETRY_MS = 2000  # the reconnection delay the stream suggests to EventSource clients

router = APIRouter(tags=["jobs"])

LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)]


def event_id(job: Job) -> str:
    """The id of the event that shows this state of the job: its last write time in microseconds."""
    return str(int(job.updated_at.timestamp() * 1_000_000))


def _fingerprint(job: Job) -> tuple[Any, ...]:
    """What makes two reads of a job the same event (the ETA, recomputed on every read, is left out)."""
    return (job.status, job.stage, json.dumps(job.progress, sort_keys=True),
            json.dumps(job.metrics, sort_keys=True), job.error_code, job.attempt, event_id(job))


def _event_name(previous: Job | None, job: Job) -> str:
    """Names an event by the most significant change since the previous one."""
    if job.status in TERMINAL:
        return "end"
    if previous is None or previous.status != job.status:
        return "status"
    if previous.stage != job.stage:
        return "stage"
    if previous.progress != job.progress:
        return "progress"
    return "metrics"


def _payload(job: Job) -> str:
    """The event data: the job's API view, with the worker's live training metrics in `progress`."""
    body = job_out(job, utcnow()).model_dump(mode="json")
    live = (job.progress or {}).get("metrics")
    if isinstance(live, dict):
        body["progress"]["metrics"] = live
    return json.dumps(body, separators=(",", ":"))


async def _read(jobs: JobService, tenant: str, job_id: str) -> Job | None:
    """Reads the tenant's job off the event loop; None once it is gone (deleted)."""
    try:
        return await anyio.to_thread.run_sync(lambda: jobs.get(tenant=tenant, job_id=job_id))
    except NotFound:
        return None


class _HeldStream(StreamingResponse):
    """A streaming response that gives its stream share back however it ends (done, cancelled, failed)."""

    def __init__(self, content: AsyncIterator[str], give_back: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._give_back = give_back

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Streams, then releases the share."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._give_back()


async def _revoked(context: AppContext, credentials: HTTPAuthorizationCredentials | None) -> bool:
    """Tells whether the stream's key has stopped being valid (never, when auth is open)."""
    if context.settings.auth == "open":
        return False
    return not await anyio.to_thread.run_sync(still_authorized, context, credentials)


async def _stream(context: AppContext, credentials: HTTPAuthorizationCredentials | None, tenant: str,
                  job: Job, seen_id: str | None) -> AsyncIterator[str]:
    """Yields SSE frames: each new state of the job, heartbeats while nothing changes, then the end."""
    jobs, settings = context.jobs, context.settings
    yield f"retry: {RETRY_MS}\n\n"
    started = last_sent = checked = time.monotonic()
    # Resuming: the state the client already has is not sent again.
    sent = _fingerprint(job) if seen_id == event_id(job) else None
    previous: Job | None = None
    current: Job | None = job
    while current is not None:
        if _fingerprint(current) != sent:
            name = _event_name(previous, current)
            yield f"id: {event_id(current)}\nevent: {name}\ndata: {_payload(current)}\n\n"
            sent, previous, last_sent = _fingerprint(current), current, time.monotonic()
        if current.status in TERMINAL or time.monotonic() - started >= settings.stream_max_s:
            return
        if time.monotonic() - checked >= settings.stream_auth_recheck_s:
            if await _revoked(context, credentials):
                yield ": the API key of this stream was revoked\n\n"
                return
            checked = time.monotonic()
        if time.monotonic() - last_sent >= HEARTBEAT_S:
            yield ": keepalive\n\n"
            last_sent = time.monotonic()
        await anyio.sleep(POLL_S)
        current = await _read(jobs, tenant, job.id)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "events named status, stage, progress, metrics, end; data = the job"},
               204: {"description": "Last-Event-ID names the terminal event: nothing more will come"},
               401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 429: {"model": ErrorBody}},
)
async def job_events(
    job_id: str, request: Request, context: ContextDep, tenant: TenantDep, credentials: CredentialsDep,
    last_event_id: LastEventId = None,
) -> Response:
    """Streams a job's state changes as server-sent events until it ends (404 before streaming if absent).

    A stream lasts at most `stream_max_s`; reconnect with `Last-Event-ID` (EventSource does). 429 when the
    tenant or the server has as many streams open as allowed.
    """
    job = await anyio.to_thread.run_sync(lambda: context.jobs.get(tenant=tenant, job_id=job_id))
    if job.status in TERMINAL and last_event_id == event_id(job):
        return Response(status_code=204)  # EventSource stops reconnecting on 204
    give_back = stream_shares(request).take(tenant)
    # X-Accel-Buffering: nginx would otherwise hold events back until its buffer fills.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return _HeldStream(_stream(context, credentials, tenant, job, last_event_id), give_back,
                       media_type="text/event-stream", headers=headers)
