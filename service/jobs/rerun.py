"""`POST /jobs/{id}/rerun`: a new job on the original's inputs and its fully resolved config.

The config is the original report's `manifest.config` (every default filled in), so a later change of a
default cannot change the rerun. The inputs are the stored ones the original named; a job whose files came
with its POST has them promoted to stored inputs first (content-addressed, so a second rerun reuses them,
and deleting the original no longer takes the rerun's inputs with it). The worker compares the rerun's
kept weights and accuracies with the original's report (workers/rerun.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from service.db.models import Job, new_job_id
from service.errors import Conflict, NotFound
from service.jobs.service import StoredInput
from service.jobs.stored_inputs import StoredInputs, as_job_input
from service.storage.base import ObjectNotFound
from service.storage.keys import InputKind, input_key

__all__ = ["Reruns"]


@dataclass(frozen=True)
class Reruns:
    """Creates reruns of a tenant's succeeded jobs."""

    stored: StoredInputs

    def rerun(self, *, tenant: str, job_id: str, idempotency_key: str | None) -> tuple[Job, bool]:
        """Queues a rerun of a succeeded job; returns (job, created) as `JobService.submit` does."""
        jobs = self.stored.jobs
        original = jobs.get(tenant=tenant, job_id=job_id)
        if original.status != "succeeded":
            raise Conflict(f"job {job_id} is {original.status}; only a succeeded job can be rerun (its "
                           "report is what the rerun is compared with)", code="not_ready")
        report: dict[str, Any] = json.loads(jobs.report(tenant=tenant, job_id=job_id))
        config = (report.get("manifest") or {}).get("config") or original.config
        model = self._input(original, "model", original.model_id)
        dataset = self._input(original, "dataset", original.dataset_id)
        return jobs.submit(tenant=tenant, job_id=new_job_id(), config_text=json.dumps(config), model=model,
                           dataset=dataset, idempotency_key=idempotency_key, rerun_of=original.id)

    def _input(self, original: Job, kind: InputKind, stored_id: str | None) -> StoredInput:
        """The original's input as a stored one: the one it named, or its own upload promoted."""
        if stored_id is not None:
            try:
                row = self.stored.get(tenant=original.tenant, kind=kind, input_id=stored_id)
            except NotFound as exc:  # deleted since the original ran
                raise Conflict(f"the stored {kind} {stored_id} of job {original.id} was deleted; it cannot "
                               "be rerun", code="inputs_gone") from exc
            return as_job_input(row)
        return self._promote(original, kind)

    def _promote(self, original: Job, kind: InputKind) -> StoredInput:
        """Copies a job's own upload into a stored input (or finds the tenant's stored twin of it)."""
        store, tenant = self.stored.jobs.store, original.tenant
        input_id, key = self.stored.new_key(tenant)
        try:
            size, sha256 = store.put_stream(key, store.open_stream(input_key(tenant, original.id, kind)))
        except ObjectNotFound:
            raise Conflict(f"the {kind} of job {original.id} is no longer stored; it cannot be rerun",
                           code="inputs_gone") from None
        fmt = original.model_format if kind == "model" else original.dataset_format
        upload = StoredInput(key=key, size=size, sha256=sha256, head=b"", format=fmt)
        row, _ = self.stored.register(tenant=tenant, kind=kind, input_id=input_id, upload=upload)
        return as_job_input(row)
