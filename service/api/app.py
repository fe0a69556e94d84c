"""The FastAPI app factory: settings in, wired app out (nothing is built at import time)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from service.api.deps import AppContext
from service.api.errors import install_error_handlers
from service.api.openapi import install_openapi
from service.api.request_guard import RequestGuard
from service.api.routes_dashboard import router as dashboard_router
from service.api.routes_datasets import router as datasets_router
from service.api.routes_events import router as events_router
from service.api.routes_health import router as health_router
from service.api.routes_jobs import router as jobs_router
from service.api.routes_models import datasets_router as stored_datasets_router
from service.api.routes_models import models_router
from service.api.routes_preflight import router as preflight_router
from service.api.routes_sweeps import router as sweeps_router
from service.api.routes_webhooks import router as webhooks_router
from service.db.migrate import upgrade_head
from service.db.session import make_engine, make_session_factory
from service.jobs.preflight_spare import keep_spare_ready
from service.jobs.service import JobService
from service.metrics import install_metrics
from service.queue import make_celery
from service.reaper import start_reaper
from service.settings import Settings, get_settings
from service.storage import make_store
from service.webhooks.sender import start_sender

__all__ = ["build_context", "create_app"]

DESCRIPTION = """Prune, finetune and verify a trained model; download it as ONNX with a report.

POST a model (ONNX, or safetensors weights of a built-in architecture) and a dataset to `/jobs`, poll
`/jobs/{id}`, then download `/jobs/{id}/artifacts/model.onnx` and `/jobs/{id}/report`. Errors are always
`{"error": {"code": "...", "message": "..."}}`.
"""


def build_context(settings: Settings) -> AppContext:
    """Wires the engine, store, broker producer and job service the settings describe."""
    engine = make_engine(settings.database_url, connect_timeout_s=settings.db_connect_timeout_s,
                         statement_timeout_s=settings.db_statement_timeout_s)
    store = make_store(settings)
    celery = make_celery(settings)
    jobs = JobService(settings=settings, sessions=make_session_factory(engine), store=store, celery=celery)
    return AppContext(settings=settings, engine=engine, store=store, celery=celery, jobs=jobs)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the API; on startup it migrates the database when the settings ask (SQLite by default)."""
    context = build_context(settings or get_settings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        """Migrates (embedded default), starts the reaper, the webhook sender and a waiting pre-flight child
        before serving; stops the loops at shutdown."""
        if context.settings.migrate_at_startup:
            await anyio.to_thread.run_sync(upgrade_head, context.engine)
        reaper = start_reaper(context.settings, context.jobs.sessions, context.store, context.celery,
                              actor=f"reaper@api:{os.getpid()}")
        sender = start_sender(context.settings, context.jobs.sessions)
        if context.settings.preflight_spare and not context.settings.preflight_url:
            keep_spare_ready()  # the first pre-flight is warm too
        yield
        for stop in (reaper, sender):
            if stop is not None:
                stop.set()
        context.engine.dispose()

    app = FastAPI(title="Secateur", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.context = context
    install_error_handlers(app)
    app.include_router(jobs_router)
    app.include_router(webhooks_router)
    app.include_router(preflight_router)
    app.include_router(sweeps_router)
    app.include_router(models_router)
    app.include_router(stored_datasets_router)
    app.include_router(datasets_router)
    app.include_router(events_router)
    app.include_router(health_router)
    app.include_router(dashboard_router)
    app.add_middleware(RequestGuard, settings=context.settings)  # body read timeouts, bounded JSON bodies
    install_metrics(app)  # GET /metrics and the HTTP latency middleware
    install_openapi(app)  # our error shape and the job config's schema in /openapi.json
    return app
