"""Stored inputs: a tenant's reusable models and datasets, content-addressed, named by jobs through their ids.

An upload streams into its own key (`tenants/<t>/inputs/<id>`) and is sniffed exactly as a job's upload is
(service/api/uploads.py); once its sha256 is known, a tenant's earlier upload of the same bytes wins and the
new copy is deleted, so the same content is stored once and counted once against the storage quota. Jobs
that name a stored input add nothing to the quota (service/jobs/repository.stored_input_bytes). The deep,
sandboxed check of a model against a dataset runs when a job pairs them, as for uploaded files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from service.db.models import InputFile, Job, new_job_id
from service.db.session import session_scope
from service.errors import Conflict, NotFound
from service.jobs import repository
from service.jobs import stored_inputs_repository as inputs_repo
from service.jobs.inputs import ZIP_FORMATS, sniff_zip_dataset
from service.jobs.service import JobService, StoredInput
from service.limits import check_storage
from service.storage.keys import InputKind, input_key, stored_input_key

__all__ = ["StoredInputs", "as_job_input", "job_input_key"]

log = logging.getLogger(__name__)


def job_input_key(tenant: str, job_id: str, kind: InputKind, stored_id: str | None) -> str:
    """Returns where a job's input lives: the stored input it names, else its own upload."""
    return stored_input_key(tenant, stored_id) if stored_id is not None else input_key(tenant, job_id, kind)


def as_job_input(row: InputFile) -> StoredInput:
    """Describes a stored input as a job's input (its key, size, sha256, format and id)."""
    return StoredInput(key=stored_input_key(row.tenant, row.id), size=row.bytes, sha256=row.sha256, head=b"",
                       format=row.format, input_id=row.id)


@dataclass(frozen=True)
class StoredInputs:
    """Registers, reads, lists and deletes a tenant's stored models and datasets."""

    jobs: JobService  # its settings, sessions and store

    def new_key(self, tenant: str) -> tuple[str, str]:
        """Returns a fresh input id and the key its upload streams into."""
        input_id = new_job_id()
        return input_id, stored_input_key(tenant, input_id)

    def discard(self, key: str) -> None:
        """Deletes an upload that will not be kept (a twin, a refusal); logs instead of raising."""
        try:
            self.jobs.store.delete(key)
        except Exception:  # best effort: the caller is already answering or failing
            log.exception("could not delete the stored upload %s", key)

    def register(self, *, tenant: str, kind: InputKind, input_id: str,
                 upload: StoredInput) -> tuple[InputFile, bool]:
        """Records a received upload; returns (row, created): an earlier upload of the same bytes if any."""
        try:
            with session_scope(self.jobs.sessions) as session:
                twin = inputs_repo.find_by_sha256(session, tenant=tenant, kind=kind, sha256=upload.sha256)
                used = repository.stored_input_bytes(session, tenant=tenant)
            if twin is not None:
                self.discard(upload.key)
                return twin, False
            check_storage(self.jobs.settings, used, upload.size)
            row = InputFile(id=input_id, tenant=tenant, kind=kind, sha256=upload.sha256, bytes=upload.size,
                            format=self._format(kind, upload))
            with session_scope(self.jobs.sessions) as session:
                inputs_repo.create_input(session, row=row)
        except IntegrityError:  # the same bytes, uploaded concurrently, were recorded first
            self.discard(upload.key)
            with session_scope(self.jobs.sessions) as session:
                twin = inputs_repo.find_by_sha256(session, tenant=tenant, kind=kind, sha256=upload.sha256)
            if twin is None:
                raise Conflict("the same file is being stored by another request; retry",
                               code="upload_conflict") from None
            return twin, False
        except BaseException:
            self.discard(upload.key)
            raise
        log.info("stored %s %s for tenant %s (%d bytes)", kind, input_id, tenant, upload.size)
        return row, True

    def _format(self, kind: InputKind, upload: StoredInput) -> str:
        """The upload's format: the sniffed one, a ZIP dataset classified by its member names."""
        if kind == "dataset" and upload.format in ZIP_FORMATS:
            limit = self.jobs.settings.max_zip_directory_bytes
            return sniff_zip_dataset(self.jobs.store, upload.key, upload.size, max_directory=limit)
        return upload.format

    def get(self, *, tenant: str, kind: InputKind, input_id: str) -> InputFile:
        """Returns the tenant's stored input; NotFound for a missing one and for another tenant's alike."""
        with session_scope(self.jobs.sessions) as session:
            row = inputs_repo.get_input(session, tenant=tenant, kind=kind, input_id=input_id)
        if row is None:
            raise NotFound(f"no stored {kind} {input_id}")
        return row

    def list(self, *, tenant: str, kind: InputKind, limit: int) -> list[InputFile]:
        """Returns the tenant's stored inputs of one kind, newest first."""
        with session_scope(self.jobs.sessions) as session:
            return inputs_repo.list_inputs(session, tenant=tenant, kind=kind, limit=limit)

    def delete(self, *, tenant: str, kind: InputKind, input_id: str) -> None:
        """Deletes a stored input: refused (409 in_use) while an unfinished job names it; object, then row."""
        with session_scope(self.jobs.sessions) as session:
            row = inputs_repo.get_input(session, tenant=tenant, kind=kind, input_id=input_id, for_update=True)
            if row is None:
                raise NotFound(f"no stored {kind} {input_id}")
            users = inputs_repo.unfinished_users(session, tenant=tenant, input_id=input_id)
            if users:
                raise Conflict(f"{kind} {input_id} is used by unfinished job(s) {', '.join(users)}; wait for "
                               "them to end or cancel them", code="in_use")
            self.jobs.store.delete(stored_input_key(tenant, input_id))  # a failure keeps the row: retry
            inputs_repo.delete_input(session, tenant=tenant, input_id=input_id)

    def download(self, *, tenant: str, kind: InputKind, input_id: str, path: Path) -> None:
        """Copies the tenant's stored input to a local file (NotFound when there is none)."""
        row = self.get(tenant=tenant, kind=kind, input_id=input_id)
        self.jobs.store.get_to_file(stored_input_key(tenant, row.id), path)

    def for_job(self, *, tenant: str, model_id: str, dataset_id: str) -> tuple[StoredInput, StoredInput]:
        """Resolves a job's stored model and dataset ids (NotFound names the missing one)."""
        model = self.get(tenant=tenant, kind="model", input_id=model_id)
        dataset = self.get(tenant=tenant, kind="dataset", input_id=dataset_id)
        return as_job_input(model), as_job_input(dataset)

    def submit_job(self, *, tenant: str, model_id: str, dataset_id: str, config_text: str,
                   idempotency_key: str | None) -> tuple[Job, bool]:
        """Submits a job on stored inputs (checked as uploaded files are); returns (job, created)."""
        model, dataset = self.for_job(tenant=tenant, model_id=model_id, dataset_id=dataset_id)
        return self.jobs.submit(tenant=tenant, job_id=new_job_id(), config_text=config_text, model=model,
                                dataset=dataset, idempotency_key=idempotency_key)
