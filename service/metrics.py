"""Prometheus metrics: `GET /metrics` and an HTTP latency middleware, installed by `install_metrics(app)`.

Job figures come from the database at scrape time, so every API replica reports the whole cluster
(aggregate them with `max`, not `sum`): jobs by status, queue depth and age, the newest worker heartbeat,
GPU memory that workers put in their progress, and duration histograms fed from jobs as they finish
(job wall time by outcome, queue wait, and per-stage time from each job's `metrics.timings_s`). The
histograms start from the whole job history at a process's first scrape, then add only newly finished
jobs. The API never imports torch: GPU figures exist only when a worker reports them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db.models import STATUSES, utcnow
from service.db.session import session_scope
from service.jobs import metrics_queries as queries
from workers.compression.preflight_verdict import PASSED as PREFLIGHT_PASSED
from workers.compression.preflight_verdict import PREFLIGHT_VISIBLE
from workers.compression.preflight_verdict import REFUSED as PREFLIGHT_REFUSED

__all__ = ["GPU_MEMORY_KEY", "HttpMetrics", "JobsCollector", "install_metrics", "router"]

# The key a worker may put in a running job's `progress` with its device's allocated bytes.
GPU_MEMORY_KEY = "gpu_memory_bytes"
_INGEST_BATCH = 5000  # finished jobs read per query while catching up
_JOB_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)
_STAGE_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class JobsCollector(Collector):
    """Reads job gauges from the database on each scrape and feeds the duration histograms."""

    def __init__(self, sessions: Callable[[], sessionmaker[Session]], clock: Callable[[], datetime] = utcnow):
        """`sessions` is called at scrape time, so the app's context may be wired after installation."""
        self.sessions, self.clock = sessions, clock
        self._lock = threading.Lock()  # scrapes may overlap; ingestion must not count a job twice
        self._watermark: tuple[datetime, str] | None = None
        self.job_seconds = Histogram("secateur_job_duration_seconds", "Running time of finished jobs "
                                     "(started to finished), by final status", ["status"],
                                     buckets=_JOB_BUCKETS, registry=None)
        self.wait_seconds = Histogram("secateur_job_queue_wait_seconds", "Time finished jobs waited "
                                      "between submission and their (last) start", buckets=_JOB_BUCKETS,
                                      registry=None)
        self.stage_seconds = Histogram("secateur_stage_duration_seconds", "Time succeeded jobs spent in "
                                       "each stage (report timings_s)", ["stage"], buckets=_STAGE_BUCKETS,
                                       registry=None)

    def collect(self) -> Iterable[Metric]:
        """Queries the database once and returns every job metric."""
        with self._lock, session_scope(self.sessions()) as session:
            counts = queries.count_by_status(session)
            oldest, beat = queries.oldest_queued(session), queries.newest_heartbeat(session)
            reports = queries.worker_reports(session)
            verdicts, misses = queries.preflight_outcomes(session)
            self._ingest(session)
        now = self.clock()
        jobs = GaugeMetricFamily("secateur_jobs", "Jobs by status", labels=["status"])
        for status in STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        found: list[Metric] = [
            jobs,
            GaugeMetricFamily("secateur_queue_depth", "Jobs queued and waiting for a worker",
                              value=counts.get("queued", 0)),
            GaugeMetricFamily("secateur_queue_oldest_age_seconds", "Age of the oldest queued job "
                              "(0 when the queue is empty)",
                              value=0.0 if oldest is None else (now - oldest).total_seconds()),
            GaugeMetricFamily("secateur_workers_busy", "Workers holding a job",
                              value=len({worker for worker, _ in reports})),
            _gpu_memory(reports),
            *_preflight(verdicts, misses),
        ]
        if beat is not None:  # absent when nothing runs, so absent() alerts stay meaningful
            found.append(GaugeMetricFamily("secateur_worker_heartbeat_age_seconds", "Seconds since the "
                                           "newest heartbeat of any running job",
                                           value=(now - beat).total_seconds()))
        for histogram in (self.job_seconds, self.wait_seconds, self.stage_seconds):
            found.extend(histogram.collect())
        return found

    def _ingest(self, session: Session) -> None:
        """Observes the durations of jobs finished since the last scrape (all of them at the first)."""
        while True:
            batch = queries.finished_since(session, after=self._watermark, limit=_INGEST_BATCH)
            for job in batch:
                self._observe(job)
            if batch:
                self._watermark = (batch[-1].finished_at, batch[-1].id)
            if len(batch) < _INGEST_BATCH:
                return

    def _observe(self, job: queries.FinishedJob) -> None:
        """Adds one finished job to the histograms."""
        if job.started_at is not None:  # a job cancelled while queued never ran
            self.job_seconds.labels(job.status).observe((job.finished_at - job.started_at).total_seconds())
            self.wait_seconds.observe(max((job.started_at - job.created_at).total_seconds(), 0.0))
        timings = (job.metrics or {}).get("timings_s") or {}
        for stage, seconds in timings.items():
            if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                self.stage_seconds.labels(str(stage)).observe(float(seconds))


def _preflight(verdicts: dict[str, int], misses: dict[str, int]) -> list[Metric]:
    """Jobs by their own pre-flight verdict, and those that passed it yet failed for a reason it covers (a
    pre-flight miss: should stay at zero). Counted from the jobs kept in the database."""
    runs = CounterMetricFamily("secateur_jobs_preflight", "Jobs by the verdict of the pre-flight they ran "
                               "on their inputs before training", labels=["result"])
    for result, kind in (("passed", PREFLIGHT_PASSED), ("refused", PREFLIGHT_REFUSED)):
        runs.add_metric([result], verdicts.get(kind, 0))
    missed = CounterMetricFamily("secateur_jobs_failed_after_preflight", "Jobs that passed pre-flight and "
                                 "then failed for a reason pre-flight checks (by error code; should stay 0)",
                                 labels=["code"])
    for code in PREFLIGHT_VISIBLE:
        missed.add_metric([code], misses.get(code, 0))
    return [runs, missed]


def _gpu_memory(reports: list[tuple[str, dict[str, Any]]]) -> Metric:
    """GPU memory per worker, as workers report it in their running job's progress (none on CPU)."""
    family = GaugeMetricFamily("secateur_worker_gpu_memory_bytes", "GPU memory allocated by a worker's job, "
                               "as the worker reports it", labels=["worker"])
    for worker, progress in reports:
        value = progress.get(GPU_MEMORY_KEY)
        if isinstance(value, int | float) and not isinstance(value, bool):
            family.add_metric([worker], float(value))
    return family


class HttpMetrics:
    """ASGI middleware timing each request by method, route template (not raw path) and status."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        """Wraps `app`; `histogram` has labels method, route, status."""
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Times the request; event streams are left out (their length is the job's, not the server's)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, streaming = 500, False

        async def send_and_note(message: Message) -> None:
            """Notes the response status and whether it is an event stream."""
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                streaming = content_type.startswith(b"text/event-stream")
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if not streaming:
                # FastAPI stores the matched route in the scope; unmatched paths share one label value,
                # so scanners probing random URLs cannot blow up the series count.
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                elapsed = time.perf_counter() - started
                self.histogram.labels(scope["method"], route, str(status)).observe(elapsed)


router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus exposition: job states, queue, heartbeats, durations, HTTP latency, process figures."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    body = await anyio.to_thread.run_sync(generate_latest, registry)  # the job queries block
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def install_metrics(app: FastAPI) -> None:
    """Adds `GET /metrics` and the HTTP latency middleware to an app built by `create_app`."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(JobsCollector(lambda: app.state.context.jobs.sessions))
    latency = Histogram("secateur_http_request_duration_seconds", "HTTP request latency by route template",
                        ["method", "route", "status"], buckets=_HTTP_BUCKETS, registry=registry)
    app.state.metrics_registry = registry
    app.add_middleware(HttpMetrics, histogram=latency)
    app.include_router(router)
