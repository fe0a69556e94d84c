"""The workers' Celery app: it only carries `{job_id}` wake-ups; the database is the queue of record.

Settings follow DESIGN.md's reliability rules: early ack (a wake-up is acknowledged on receipt; a lost
one is recovered from the jobs table, never by broker redelivery, which re-runs long tasks), prefetch 1,
one task per child process (each job gets a fresh process: no leaked CUDA context, torch threads or
memory), JSON only. This module, the task module and the forking parent never import torch: the engine
is imported inside the child that runs the job.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from service.queue import TASK_NAME, broker_options
from service.settings import Settings

__all__ = ["TASK_NAME", "make_celery"]

log = logging.getLogger(__name__)


def make_celery(settings: Settings) -> Celery:
    """Returns the worker-side Celery app for the settings' broker, with `secateur.run_job` registered."""
    from workers import tasks

    app = Celery("secateur-worker", set_as_current=False)
    app.conf.update(broker_options(settings))
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=False,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker outlives broker restarts; it never gives up
        worker_send_task_events=False,
    )
    app.task(name=TASK_NAME, ignore_result=True)(tasks.run_job)
    worker_process_init.connect(_dispose_inherited_pools, weak=False, dispatch_uid="secateur.dispose_pools")
    return app


def _dispose_inherited_pools(**_: Any) -> None:
    """Drops the DB connections a forked child inherited from its parent (sockets must not be shared)."""
    from workers import runner

    runner.dispose_engines()
    log.debug("worker child started; inherited database pools dropped")
