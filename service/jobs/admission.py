"""What a job must pass before it is queued: its callback target, the storage quota, then its uploads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from service.db.session import session_scope
from service.jobs import repository
from service.jobs.inputs import ZIP_FORMATS, sniff_zip_dataset
from service.jobs.sandbox import inspect_uploads
from service.limits import check_storage
from service.settings import Settings
from service.storage.base import ObjectStore
from service.webhooks.admission import admit_webhook
from workers.compression.config import JobConfig

if TYPE_CHECKING:
    from service.jobs.service import StoredInput

__all__ = ["admit_uploads"]


def admit_uploads(*, settings: Settings, sessions: sessionmaker[Session], store: ObjectStore, tenant: str,
                  config: JobConfig, model: StoredInput, dataset: StoredInput) -> str:
    """Checks the quota with the new bytes, then validates both files (sandboxed); returns the dataset format.

    Stored inputs a job names by id are counted once already (as stored inputs): they add no bytes here.

    With `validate_uploads` off only the cheap checks run here (the head sniff already ran while the
    upload streamed in; a ZIP dataset is classified by its member names); the worker validates in full.
    A `webhook_url` is checked first: a callback the service could not make is refused before the uploads are.
    """
    admit_webhook(settings=settings, sessions=sessions, tenant=tenant, url=config.webhook_url)
    with session_scope(sessions) as session:
        used = repository.stored_input_bytes(session, tenant=tenant)
    check_storage(settings, used, sum(f.size for f in (model, dataset) if f.input_id is None))
    if settings.validate_uploads:
        return inspect_uploads(store, settings, model=model, dataset=dataset,
                               architecture=config.architecture).dataset_format
    if dataset.format in ZIP_FORMATS:
        limit = settings.max_zip_directory_bytes
        return sniff_zip_dataset(store, dataset.key, dataset.size, max_directory=limit)
    return dataset.format
