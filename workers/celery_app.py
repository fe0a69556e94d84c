"""The workers' Celery app: it only carries `{job_id}` wake-ups; the database is the queue of record.

Settings follow DESIGN.md's reliability rules: early ack (a wake-up is acknowledged on receipt; a lost
one is recovered from the jobs table, never by broker redelivery, which re-runs long tasks), prefetch off,
one task per child process (each job gets a fresh process: no leaked CUDA context, torch threads or
memory), JSON only. This module, the task module and the forking parent never import torch: the engine
is imported inside the child that runs the job.

The parent also runs the reaper (`service.reaper`) in a thread, so a deployment of workers alone recovers
jobs whose worker died. On SIGTERM (warm shutdown) the parent passes the signal on to its job children:
each one checkpoints and hands its job back to the queue within `shutdown_grace_s` (`workers.heartbeat`),
so shutdown never waits for a whole job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Any

from billiard.process import active_children
from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutting_down

from service.db.session import make_engine, make_session_factory
from service.queue import TASK_NAME, broker_options
from service.queue import make_celery as make_producer
from service.reaper import start_reaper
from service.settings import Settings
from service.storage import make_store
from workers.lease import worker_id

__all__ = ["TASK_NAME", "make_celery"]

log = logging.getLogger(__name__)
RECYCLE_CHECK_S = 0.25
_reaper: dict[str, Any] = {}  # the parent's reaper: its engine and the event that stops it


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
        # A busy worker reserves no further wake-up, so wake-ups reach idle workers instead of waiting
        # behind a running (or frozen) job. Celery supports it for Redis only and warns elsewhere.
        worker_disable_prefetch=settings.broker_url.startswith(("redis://", "rediss://")),
        worker_max_tasks_per_child=1,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker outlives broker restarts; it never gives up
        worker_send_task_events=False,
    )
    app.task(name=TASK_NAME, ignore_result=True)(tasks.run_job)
    worker_process_init.connect(_dispose_inherited_pools, weak=False, dispatch_uid="secateur.dispose_pools")
    worker_shutting_down.connect(_forward_sigterm, weak=False, dispatch_uid="secateur.forward_sigterm")
    worker_ready.connect(lambda sender, **_: _on_ready(sender, settings), weak=False,
                         dispatch_uid="secateur.on_ready")
    return app


def _on_ready(consumer: Any, settings: Settings) -> None:
    """Once the worker consumes: start the reaper, and replace finished job processes promptly."""
    _start_reaper(settings)
    _recycle_children_promptly(consumer)


def _recycle_children_promptly(consumer: Any) -> None:
    """Checks every RECYCLE_CHECK_S for exited pool children and starts their replacements.

    With one task per child, a child exits after every wake-up (a duplicate one included). Celery starts
    the replacement when the child's exit is seen, but often looks too early and then waits for its 5 s
    maintenance timer (celery/celery#9588): each exit cost 5 s of idle worker, measured here.
    """
    pool = getattr(getattr(consumer, "pool", None), "_pool", None)
    hub = getattr(consumer, "hub", None)
    if pool is not None and hub is not None and hasattr(pool, "maintain_pool"):
        hub.call_repeatedly(RECYCLE_CHECK_S, pool.maintain_pool)


def _start_reaper(settings: Settings) -> None:
    """Starts the reaper thread in the worker's parent process (once, when the worker is ready)."""
    if "stop" in _reaper:
        return
    engine = make_engine(settings.database_url, connect_timeout_s=settings.db_connect_timeout_s,
                         statement_timeout_s=settings.db_statement_timeout_s)
    stop = start_reaper(settings, make_session_factory(engine), make_store(settings), make_producer(settings),
                        actor=f"reaper@{worker_id()}")
    _reaper.update(engine=engine, stop=stop)


def _forward_sigterm(sig: str = "", how: str = "", **_: Any) -> None:
    """Warm shutdown: stops the reaper and asks every job child to checkpoint and release its job."""
    stop = _reaper.get("stop")
    if stop is not None:
        stop.set()
    if how != "Warm":
        return  # a cold shutdown terminates the children itself; the reaper recovers their jobs
    for child in active_children():
        if child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)


def _dispose_inherited_pools(**_: Any) -> None:
    """Drops the DB connections a forked child inherited from its parent (sockets must not be shared)."""
    from workers import runner

    runner.dispose_engines()
    engine = _reaper.pop("engine", None)
    if engine is not None:
        engine.dispose(close=False)
    _reaper.clear()  # the reaper thread lives in the parent only
    log.debug("worker child started; inherited database pools dropped")
