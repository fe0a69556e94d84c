"""The Celery task, thin like a web view: it takes a job id, builds the settings and calls the runner."""

from __future__ import annotations

from service.settings import get_settings
from workers import runner

__all__ = ["run_job"]


def run_job(job_id: str) -> None:
    """Runs the job `job_id` if it is still queued (the claim makes duplicate wake-ups harmless).

    Registered as `secateur.run_job` by `workers.celery_app.make_celery`; the row is re-read from the
    database, never passed in the message.
    """
    runner.run_job(str(job_id), settings=get_settings())
