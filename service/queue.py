"""Wake-ups: the broker carries only `{job_id}`; the database stays the queue of record.

`broker_options` is the one description of how to reach the broker, shared by the API's producer and the
workers' Celery app, so both sides agree.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import Celery

from service.settings import Settings, get_settings

__all__ = ["TASK_NAME", "broker_options", "make_celery", "ping_broker", "send_wakeup"]

TASK_NAME = "secateur.run_job"
log = logging.getLogger(__name__)


def broker_options(settings: Settings) -> dict[str, Any]:
    """Returns the Celery settings for reaching the broker (the embedded SQLite broker needs no options)."""
    timeout = settings.broker_timeout_s
    options: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_connection_timeout": timeout,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
    }
    if settings.broker_url.startswith(("redis://", "rediss://")):
        options["broker_transport_options"] = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    return options


def make_celery(settings: Settings) -> Celery:
    """Returns a producer-only Celery app (no tasks registered: it sends by name, imports no worker code)."""
    options = broker_options(settings)
    # A request must not wait out kombu's default reconnect backoff (~2 s): one quick retry, then give up.
    transport = options.setdefault("broker_transport_options", {})
    transport.update({"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1})
    app = Celery("secateur-api", set_as_current=False)
    app.conf.update(options)
    return app


@lru_cache(maxsize=1)
def _default_celery() -> Celery:
    """The process's producer for the settings' broker, made on first use."""
    return make_celery(get_settings())


def send_wakeup(job_id: str, *, celery: Celery | None = None) -> bool:
    """Asks a worker to run a committed job; False (logged) when the broker is down: the job stays queued."""
    app = celery if celery is not None else _default_celery()
    try:
        app.send_task(TASK_NAME, args=[job_id], retry=False, ignore_result=True)
    except Exception as exc:  # any broker failure: the reaper re-sends wake-ups of jobs left queued
        log.warning("job %s: wake-up not sent (%s); the job stays queued", job_id, exc)
        return False
    return True


def ping_broker(celery: Celery) -> None:
    """Raises unless the broker accepts a connection now (readiness probe; one try, bounded by timeouts)."""
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, interval_max=0.2)
