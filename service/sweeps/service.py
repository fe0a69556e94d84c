"""Sweep use cases: create one job per target on stored inputs, read, list, cancel and delete as a whole.

A sweep is admitted as one submission: its targets are all checked first (a bad one refuses the sweep
before any job exists) and the tenant needs a free unfinished-job slot for every point (the quota the
operator set holds for sweeps too). The first point's job validates the stored files in the sandbox as
any job does; the others pair the same files with the same config, so they skip that repeat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any, cast

from service.db.models import Job, Sweep, new_job_id
from service.db.session import session_scope
from service.errors import Conflict, InvalidRequest, NotFound, TooManyRequests
from service.jobs import repository as jobs_repository
from service.jobs.inputs import parse_config
from service.jobs.service import JobService, decode_cursor, encode_cursor
from service.jobs.states import is_terminal
from service.jobs.stored_inputs import StoredInputs
from service.sweeps import repository
from service.sweeps.schemas import SweepIn, SweepOut, sweep_out
from service.sweeps.targets import expand

__all__ = ["SweepService"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepService:
    """Creates, reads, cancels and deletes a tenant's sweeps through the job service."""

    jobs: JobService

    def create(self, *, tenant: str, body: SweepIn) -> tuple[str, list[str]]:
        """Queues one job per target on the stored inputs; returns (sweep id, job ids in target order)."""
        model, dataset = StoredInputs(self.jobs).for_job(tenant=tenant, model_id=body.model_id,
                                                         dataset_id=body.dataset_id)
        if "target" in body.config:
            raise InvalidRequest("a sweep's config has no `target`: each point's comes from `targets` or "
                                 "`range`", code="invalid_sweep")
        targets = expand(body.targets, body.range)
        texts = [json.dumps({**body.config, "target": target}) for target in targets]
        for text in texts:
            parse_config(text)  # every point's config must be valid before any job is queued
        self._check_room(tenant, len(targets))
        sweep = Sweep(id=new_job_id(), tenant=tenant, model_id=body.model_id, dataset_id=body.dataset_id,
                      config=parse_config(texts[0]).model_dump(mode="json", exclude={"target"},
                                                               exclude_none=True))
        with session_scope(self.jobs.sessions) as session:
            repository.create_sweep(session, sweep=sweep)
        job_ids: list[str] = []
        try:
            for position, (target, text) in enumerate(zip(targets, texts, strict=True)):
                # The files were validated with the first point's config; later points differ in target only.
                jobs = self.jobs if position == 0 else self._unvalidated
                job, _ = jobs.submit(tenant=tenant, job_id=new_job_id(), config_text=text, model=model,
                                     dataset=dataset, idempotency_key=None)
                job_ids.append(job.id)
                with session_scope(self.jobs.sessions) as session:
                    repository.add_point(session, sweep_id=sweep.id, position=position, job_id=job.id,
                                         target=target)
        except BaseException:
            self._undo(tenant, sweep.id, job_ids)
            raise
        log.info("sweep %s: %d jobs queued for tenant %s", sweep.id, len(job_ids), tenant)
        return sweep.id, job_ids

    @property
    def _unvalidated(self) -> JobService:
        """The job service without the sandboxed file check (for points after the first)."""
        settings = self.jobs.settings.model_copy(update={"validate_uploads": False})
        return dataclasses.replace(self.jobs, settings=settings)

    def _check_room(self, tenant: str, points: int) -> None:
        """Refuses (429) a sweep with more points than the tenant has free unfinished-job slots."""
        with session_scope(self.jobs.sessions) as session:
            unfinished = jobs_repository.count_unfinished_jobs(session, tenant=tenant)
        limit = self.jobs.settings.max_active_jobs_per_tenant
        if unfinished + points > limit:
            raise TooManyRequests(f"this sweep needs {points} job slots; you have {limit - unfinished} free "
                                  f"of {limit} (unfinished jobs count). Wait for jobs to finish, or sweep "
                                  "fewer targets", code="too_many_active_jobs", headers={"Retry-After": "30"})

    def _undo(self, tenant: str, sweep_id: str, job_ids: list[str]) -> None:
        """Takes back a sweep whose creation failed part-way: cancels and deletes its jobs, drops its row.

        A job a worker claimed meanwhile is only asked to stop (it cannot be deleted while it runs).
        """
        for job_id in job_ids:
            try:
                self.jobs.cancel(tenant=tenant, job_id=job_id)
                self.jobs.delete(tenant=tenant, job_id=job_id)
            except Exception:  # best effort: the caller is already failing
                log.warning("sweep %s: job %s could not be taken back (it may be running)", sweep_id, job_id)
        with session_scope(self.jobs.sessions) as session:
            repository.delete_sweep(session, tenant=tenant, sweep_id=sweep_id)

    def get(self, *, tenant: str, sweep_id: str) -> SweepOut:
        """Returns the tenant's sweep with its points and Pareto front; NotFound for another tenant's."""
        with session_scope(self.jobs.sessions) as session:
            sweep = repository.get_sweep(session, tenant=tenant, sweep_id=sweep_id)
            if sweep is None:
                raise NotFound(f"no sweep {sweep_id}")
            return sweep_out(sweep, repository.points_with_jobs(session, sweep_ids=[sweep_id]))

    def page(self, *, tenant: str, limit: int, cursor: str | None) -> tuple[list[SweepOut], str | None]:
        """Returns a page of the tenant's sweeps, newest first, and the cursor of the next page (or None)."""
        after = decode_cursor(cursor) if cursor else None
        with session_scope(self.jobs.sessions) as session:
            sweeps = repository.list_sweeps(session, tenant=tenant, limit=limit + 1, cursor=after)
            rows = repository.points_with_jobs(session, sweep_ids=[s.id for s in sweeps[:limit]])
        by_sweep: dict[str, list[Any]] = {}
        for point, job in rows:
            by_sweep.setdefault(point.sweep_id, []).append((point, job))
        views = [sweep_out(s, by_sweep.get(s.id, [])) for s in sweeps[:limit]]
        return views, self.cursor_after(views[-1]) if len(sweeps) > limit else None

    @staticmethod
    def cursor_after(sweep: SweepOut) -> str:
        """Returns the cursor that continues a listing after `sweep` (the jobs listing's own format)."""
        return encode_cursor(cast(Job, sweep))  # it reads only `created_at` and `id`, which a sweep has

    def cancel(self, *, tenant: str, sweep_id: str) -> SweepOut:
        """Cancels every unfinished point (queued at once, running at its next step); 409 once all ended."""
        sweep = self.get(tenant=tenant, sweep_id=sweep_id)
        if sweep.status != "running":
            raise Conflict(f"sweep {sweep_id} already finished ({sweep.status})", code="already_finished")
        with session_scope(self.jobs.sessions) as session:
            repository.mark_cancelled(session, sweep_id=sweep_id)
        for point in sweep.points:
            if not is_terminal(point.status):
                with contextlib.suppress(Conflict, NotFound):  # it ended (or was deleted) meanwhile
                    self.jobs.cancel(tenant=tenant, job_id=point.job_id)
        return self.get(tenant=tenant, sweep_id=sweep_id)

    def delete(self, *, tenant: str, sweep_id: str) -> None:
        """Deletes a finished sweep and its jobs with their files (409 not_finished while a point runs).

        The stored model and dataset stay: they belong to the tenant, and other jobs may use them.
        """
        sweep = self.get(tenant=tenant, sweep_id=sweep_id)
        if any(not is_terminal(point.status) for point in sweep.points):  # (a sweep left with no point goes)
            raise Conflict(f"sweep {sweep_id} is running; cancel it and wait until its jobs end",
                           code="not_finished")
        for point in sweep.points:
            with contextlib.suppress(NotFound):  # deleted on its own already
                self.jobs.delete(tenant=tenant, job_id=point.job_id)
        with session_scope(self.jobs.sessions) as session:
            repository.delete_sweep(session, tenant=tenant, sweep_id=sweep_id)
