"""Job use cases. Each method owns its transaction; wake-ups are sent only after the job row is committed."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from celery import Celery
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Job
from service.db.session import session_scope
from service.errors import Conflict, InvalidRequest, NotFound
from service.jobs import repository
from service.jobs.admission import admit_uploads
from service.jobs.inputs import check_model_fits, parse_config
from service.jobs.states import is_terminal
from service.jobs.stored_inputs_repository import hold_inputs
from service.limits import check_unfinished_quota
from service.queue import send_wakeup
from service.settings import Settings
from service.storage.base import ObjectNotFound, ObjectStore
from service.storage.keys import InputKind, artifact_key, input_key, job_prefix

__all__ = ["DOWNLOADABLE", "Download", "JobService", "StoredInput", "decode_cursor", "encode_cursor"]

DOWNLOADABLE = ("model.onnx", "model.onnx.zst")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredInput:
    """An uploaded file as stored: its key, size, sha256, first bytes and the format sniffed from them.

    `input_id` is set for a stored input (`POST /models`, `POST /datasets`) that a job names by its id.
    """

    key: str
    size: int
    sha256: str
    head: bytes
    format: str
    input_id: str | None = None


@dataclass(frozen=True)
class Download:
    """An artifact to hand out: a presigned URL to redirect to, or a stream of known size."""

    name: str
    url: str | None = None
    chunks: Iterator[bytes] | None = None
    size: int = 0


def encode_cursor(job: Job) -> str:
    """Returns the opaque cursor that continues a listing after `job`."""
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Reads a cursor made by `encode_cursor`; InvalidRequest when it was not."""
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created_at), str(job_id)
    except (ValueError, TypeError, binascii.Error):
        raise InvalidRequest("cursor is not one this API returned", code="invalid_cursor") from None


def _request_hash(config: dict[str, object], model: StoredInput, dataset: StoredInput) -> str:
    """Fingerprints a submission (normalized config + both files' sha256) for Idempotency-Key checks."""
    body = json.dumps({"config": config, "model": model.sha256, "dataset": dataset.sha256}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class JobService:
    """Creates, reads, cancels and deletes a tenant's jobs over the database, the store and the broker."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: ObjectStore
    celery: Celery

    def input_key(self, tenant: str, job_id: str, kind: InputKind) -> str:
        """Returns where an upload of a new job goes."""
        return input_key(tenant, job_id, kind)

    def discard(self, tenant: str, job_id: str) -> None:
        """Deletes every object of a job (a failed submission, or a deleted job); logs instead of raising."""
        try:
            self.store.delete_prefix(job_prefix(tenant, job_id))
        except Exception:  # best effort: the caller is already failing or has already answered
            log.exception("job %s: could not delete its objects", job_id)

    def replay(self, *, tenant: str, idempotency_key: str) -> Job | None:
        """Returns the tenant's job this Idempotency-Key already created (a retry), or None for a new key."""
        with session_scope(self.sessions) as session:
            return repository.get_job_by_idempotency_key(session, tenant=tenant, key=idempotency_key)

    def submit(self, *, tenant: str, job_id: str, config_text: str, model: StoredInput, dataset: StoredInput,
               idempotency_key: str | None, rerun_of: str | None = None) -> tuple[Job, bool]:
        """Checks and records a job whose inputs are stored, then wakes a worker; returns (job, created).

        Any failure deletes the job's own uploads (stored inputs it names stay): no half-written row, no
        orphaned object. `rerun_of` names the job this one reruns.
        """
        try:
            job, created = self._record(tenant=tenant, job_id=job_id, config_text=config_text, model=model,
                                        dataset=dataset, idempotency_key=idempotency_key, rerun_of=rerun_of)
        except BaseException:
            self.discard(tenant, job_id)
            raise
        if not created:
            self.discard(tenant, job_id)  # an idempotent replay: the first request's job and files stand
        else:
            send_wakeup(job.id, celery=self.celery)
        return job, created

    def _record(self, *, tenant: str, job_id: str, config_text: str, model: StoredInput, dataset: StoredInput,
                idempotency_key: str | None, rerun_of: str | None) -> tuple[Job, bool]:
        """Validates the submission and inserts the queued job (committed on return)."""
        config = parse_config(config_text)
        check_model_fits(config, model.format)
        dataset_format = admit_uploads(settings=self.settings, sessions=self.sessions, store=self.store,
                                       tenant=tenant, config=config, model=model, dataset=dataset)
        normalized = config.model_dump(mode="json", exclude_none=True)
        request_hash = _request_hash(normalized, model, dataset)
        job = Job(id=job_id, tenant=tenant, status="queued", config=normalized, progress={},
                  max_attempts=self.settings.max_attempts, model_sha256=model.sha256, model_bytes=model.size,
                  model_format=model.format, dataset_sha256=dataset.sha256, dataset_bytes=dataset.size,
                  dataset_format=dataset_format, idempotency_key=idempotency_key, request_hash=request_hash,
                  model_id=model.input_id, dataset_id=dataset.input_id, rerun_of=rerun_of)
        try:
            with session_scope(self.sessions) as session:
                if idempotency_key is not None:
                    # Replays are answered before their body is read (api/submit_guard.py); this catches
                    # only a twin that raced ours through that check and was recorded while we uploaded.
                    key = idempotency_key
                    earlier = repository.get_job_by_idempotency_key(session, tenant=tenant, key=key)
                    if earlier is not None:
                        if earlier.request_hash != request_hash:
                            raise Conflict("this Idempotency-Key was used with a different request",
                                           code="idempotency_conflict")
                        return earlier, False
                check_unfinished_quota(session, self.settings, tenant)  # under a lock, in this transaction
                hold_inputs(session, tenant=tenant, ids=[f.input_id for f in (model, dataset) if f.input_id])
                repository.create_job(session, job=job)
                formats = {"model_format": model.format, "dataset_format": dataset_format}
                repository.record_event(session, job_id=job_id, epoch=0, kind="created", actor="api",
                                        detail=formats)
        except IntegrityError:  # a concurrent request with the same Idempotency-Key won the insert
            raise Conflict("a request with this Idempotency-Key is being processed; retry to get its job",
                           code="idempotency_conflict") from None
        log.info("job %s: queued for tenant %s", job_id, tenant)
        return job, True

    def get(self, *, tenant: str, job_id: str) -> Job:
        """Returns the tenant's job; NotFound for a missing job and for another tenant's alike."""
        with session_scope(self.sessions) as session:
            job = repository.get_job(session, tenant=tenant, job_id=job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def page(
        self, *, tenant: str, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Job], str | None]:
        """Returns a page of the tenant's jobs, newest first, and the cursor of the next page (or None)."""
        after = decode_cursor(cursor) if cursor else None
        with session_scope(self.sessions) as session:
            jobs = repository.list_jobs(session, tenant=tenant, status=status, limit=limit + 1, cursor=after)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, encode_cursor(jobs[-1]) if more else None

    def cancel(self, *, tenant: str, job_id: str) -> Job:
        """Cancels a queued job at once, or asks a running one to stop at its next step boundary."""
        with session_scope(self.sessions) as session:
            job = repository.get_job(session, tenant=tenant, job_id=job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            if is_terminal(job.status):
                raise Conflict(f"job {job_id} already finished ({job.status})", code="already_finished")
            job = repository.request_cancel(session, tenant=tenant, job_id=job_id)
            if job is None:  # deleted in between: it is gone for this caller too
                raise NotFound(f"no job {job_id}")
            repository.record_event(session, job_id=job_id, epoch=job.epoch, kind="cancel_requested",
                                    actor="api", detail={"status": job.status})
        return job

    def delete(self, *, tenant: str, job_id: str) -> None:
        """Deletes a finished job: its objects first (a failure leaves the row, so DELETE can be retried)."""
        with session_scope(self.sessions) as session:
            job = repository.get_job(session, tenant=tenant, job_id=job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            if not is_terminal(job.status):
                raise Conflict(f"job {job_id} is {job.status}; cancel it and wait until it ends",
                               code="not_finished")
            self.store.delete_prefix(job_prefix(tenant, job_id))
            if not repository.delete_job(session, tenant=tenant, job_id=job_id):
                raise NotFound(f"no job {job_id}")

    def _finished(self, tenant: str, job_id: str, what: str) -> Job:
        """Returns the tenant's succeeded job; 409 not_ready while it has no outputs."""
        job = self.get(tenant=tenant, job_id=job_id)
        if job.status != "succeeded":
            raise Conflict(f"job {job_id} is {job.status}; its {what} exists once it has succeeded",
                           code="not_ready")
        return job

    def report(self, *, tenant: str, job_id: str) -> bytes:
        """Returns the succeeded job's report.json as stored."""
        self._finished(tenant, job_id, "report")
        key = artifact_key(tenant, job_id, "report.json")
        try:
            return b"".join(self.store.open_stream(key))
        except ObjectNotFound:
            raise NotFound(f"job {job_id} has no report") from None

    def artifact(self, *, tenant: str, job_id: str, name: str) -> Download:
        """Returns how to download an output: a short-lived presigned URL (S3), else a stream."""
        if name not in DOWNLOADABLE:
            raise NotFound(f"no artifact {name!r}; artifacts are {', '.join(DOWNLOADABLE)}")
        self._finished(tenant, job_id, name)
        key = artifact_key(tenant, job_id, name)
        try:
            size = self.store.size(key)
            url = self.store.presigned_get(key, self.settings.presign_expires_s)
            if url is not None:
                return Download(name=name, url=url)
            return Download(name=name, chunks=self.store.open_stream(key), size=size)
        except ObjectNotFound:
            raise NotFound(f"job {job_id} has no {name}") from None
