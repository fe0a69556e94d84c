"""The job runner: claim (fenced) → fetch inputs → compress → upload artifacts → fenced commit.

Every write after the claim carries the lease's epoch, so a worker that lost its lease (reaped, or a
duplicate) can change nothing. Whatever happens, a claimed job ends in a terminal state or (lease lost)
is left to its new owner: it never stays `running` because its worker raised. The seams for issue 5
(heartbeats, reaper, resume policy, SIGTERM release) are `ProgressWriter`, `StorageCheckpoints` and
`_settle`. Torch is imported only inside `_compress`, in the child process that runs the job.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.db.session import make_engine, make_session_factory, session_scope
from service.jobs import repository
from service.settings import Settings
from service.storage import ObjectNotFound, ObjectStore, make_store
from service.storage.keys import ARTIFACT_NAMES, artifact_key, checkpoint_key, input_key
from workers.compression.config import JobConfig
from workers.compression.errors import CompressionError, JobStopped
from workers.compression.hooks import Progress

__all__ = ["CANCEL_REQUESTED", "LEASE_LOST", "Lease", "ProgressWriter", "StorageCheckpoints",
           "dispose_engines", "run_job", "summarize", "worker_id"]

LEASE_LOST = "lease_lost"  # JobStopped reasons: another worker owns the job now; write nothing more
CANCEL_REQUESTED = "cancel_requested"  # the user cancelled: end the job `cancelled`
INPUT_SUFFIX = {"onnx": ".onnx", "safetensors": ".safetensors", "npz": ".npz", "zip": ".zip",
                "tar": ".tar", "tar.gz": ".tar.gz"}

log = logging.getLogger(__name__)
_engines: dict[str, Engine] = {}


class JobLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the job id (and the lease epoch once claimed)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        """Adds `job <id> [epoch N]:` in front of the message."""
        extra = self.extra or {}
        epoch = f" epoch {extra['epoch']}" if "epoch" in extra else ""
        return f"job {extra['job_id']}{epoch}: {msg}", kwargs


@dataclass(frozen=True)
class Lease:
    """What a worker holds after claiming a job: the fencing epoch and the job's fixed inputs."""

    job_id: str
    tenant: str
    epoch: int
    attempt: int
    config: dict[str, Any]
    model_format: str
    dataset_format: str


def worker_id() -> str:
    """Names this process for the job's `worker_id` column and events: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def session_factory(settings: Settings) -> sessionmaker[Session]:
    """Returns a session factory on this process's engine for the settings' database (one per URL)."""
    engine = _engines.get(settings.database_url)
    if engine is None:
        engine = make_engine(settings.database_url, connect_timeout_s=settings.db_connect_timeout_s,
                             statement_timeout_s=settings.db_statement_timeout_s)
        _engines[settings.database_url] = engine
    return make_session_factory(engine)


def dispose_engines() -> None:
    """Forgets engines inherited through fork without closing the parent's connections (SQLAlchemy recipe)."""
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()


class ProgressWriter:
    """The engine's `on_progress`: throttled, fenced progress writes that notice cancels and lost leases."""

    def __init__(self, lease: Lease, factory: sessionmaker[Session], interval_s: float, jlog: JobLog,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lease, self.factory, self.interval_s, self.log = lease, factory, interval_s, jlog
        self.clock = clock
        self.started = clock()
        self.last_write = -float("inf")
        self.stage: str | None = None

    def __call__(self, event: Progress) -> None:
        """Writes the event if a stage changed, an epoch ended or the interval passed; raises JobStopped."""
        now = self.clock()
        if event.stage == self.stage and not event.epoch_end and now - self.last_write < self.interval_s:
            return
        self.force(event)

    def force(self, event: Progress) -> None:
        """Writes the event now, whatever the throttle says (e.g. the job's last progress)."""
        now = self.clock()
        self.stage, self.last_write = event.stage, now
        self.write(event.stage, self._progress(event, now - self.started))

    def write(self, stage: str, progress: dict[str, Any]) -> None:
        """Stores stage and progress under the lease; raises JobStopped on a lost lease or a cancel."""
        with session_scope(self.factory) as session:
            held = repository.update_progress(session, job_id=self.lease.job_id, epoch=self.lease.epoch,
                                              stage=stage, progress=progress)
            job = repository.get_job_any_tenant(session, job_id=self.lease.job_id) if held else None
            status = job.status if job is not None else None
        if not held:
            raise JobStopped(LEASE_LOST)
        if status == "cancelling":
            raise JobStopped(CANCEL_REQUESTED)

    @staticmethod
    def _progress(event: Progress, elapsed_s: float) -> dict[str, Any]:
        """The `progress` JSON of the API: fraction, epoch/step counters, metrics and an ETA."""
        # ETA by linear extrapolation of the whole job's fraction; None until there is a trend to extend.
        eta = elapsed_s * (1.0 - event.fraction) / event.fraction if event.fraction >= 0.01 else None
        return {"fraction": round(event.fraction, 4), "epoch": event.epoch, "epochs": event.epochs,
                "step": event.step, "steps": event.steps, "eta_s": None if eta is None else round(eta, 1),
                "metrics": dict(event.metrics)}


class StorageCheckpoints:
    """The engine's CheckpointStore: blobs in object storage, a fenced pointer to the newest in the DB."""

    def __init__(self, lease: Lease, store: ObjectStore, factory: sessionmaker[Session], actor: str,
                 jlog: JobLog) -> None:
        self.lease, self.store, self.factory, self.actor, self.log = lease, store, factory, actor, jlog

    def load(self) -> bytes | None:
        """Returns the checkpoint the job's DB pointer names (from any earlier attempt), or None."""
        with session_scope(self.factory) as session:
            job = repository.get_job_any_tenant(session, job_id=self.lease.job_id)
            key = job.checkpoint_key if job is not None else None
        if key is None:
            return None
        try:
            return b"".join(self.store.open_stream(key))
        except ObjectNotFound:
            self.log.warning("checkpoint %s is missing from storage; starting without it", key)
            return None

    def save(self, blob: bytes, *, phase: str, epoch: int) -> None:
        """Stores the blob under this lease's own key, then moves the fenced DB pointer to it."""
        # One key per lease: a worker that lost its lease can never overwrite its successor's checkpoint.
        key = f"{checkpoint_key(self.lease.tenant, self.lease.job_id)}.{self.lease.epoch}"
        self.store.put_stream(key, [blob])
        with session_scope(self.factory) as session:
            held = repository.set_checkpoint(session, job_id=self.lease.job_id, epoch=self.lease.epoch,
                                             key=key)
            if held:
                repository.record_event(session, job_id=self.lease.job_id, epoch=self.lease.epoch,
                                        kind="checkpoint", actor=self.actor,
                                        detail={"phase": phase, "epoch": epoch, "bytes": len(blob)})
        if not held:
            raise JobStopped(LEASE_LOST)
        self.log.info("checkpoint saved (%s epoch %d, %d bytes)", phase, epoch, len(blob))


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The job's `metrics`: the headline figures of report.json (the full report is an artifact)."""
    sides = {side: {key: report[side].get(key) for key in
                    ("accuracy", "ort_accuracy", "params", "nonzero_params", "flops", "onnx_bytes",
                     "onnx_zstd_bytes", "latency_ms")}
             for side in ("baseline", "pruned")}
    return {**sides, "achieved": report.get("target", {}).get("achieved", {}),
            "verification_passed": report.get("verification", {}).get("passed"),
            "timings_s": report.get("timings_s", {})}


def run_job(job_id: str, *, settings: Settings, actor: str | None = None) -> str | None:
    """Runs one job to its end; returns its final status, or None when it was not ours to run."""
    actor = actor or worker_id()
    jlog = JobLog(log, {"job_id": job_id})
    factory = session_factory(settings)
    with session_scope(factory) as session:
        job = repository.claim_job(session, job_id=job_id, worker_id=actor)
        if job is None:
            jlog.info("not claimable (taken, finished or unknown); duplicate wake-up ignored")
            return None
        lease = Lease(job.id, job.tenant, job.epoch, job.attempt, dict(job.config), job.model_format,
                      job.dataset_format)
        repository.record_event(session, job_id=job_id, epoch=lease.epoch, kind="claimed", actor=actor,
                                detail={"attempt": lease.attempt})
    jlog = JobLog(log, {"job_id": job_id, "epoch": lease.epoch})
    jlog.info("claimed by %s (attempt %d)", actor, lease.attempt)
    try:
        metrics = _execute(lease, settings, factory, actor, jlog)
    except JobStopped as stop:
        return _settle(lease, factory, actor, jlog, stop=stop)
    except CompressionError as exc:
        jlog.info("failed: %s: %s", exc.code, exc.message)
        return _settle(lease, factory, actor, jlog, status="failed", code=exc.code, message=exc.message)
    except BaseException as exc:
        jlog.exception("crashed")
        _settle(lease, factory, actor, jlog, status="failed", code="internal_error",
                message=f"the worker hit an unexpected error ({type(exc).__name__}); see the worker log")
        if not isinstance(exc, Exception):
            raise  # SystemExit / KeyboardInterrupt: the job is settled, the process still stops
        return "failed"
    return _settle(lease, factory, actor, jlog, status="succeeded", metrics=metrics)


def _execute(lease: Lease, settings: Settings, factory: sessionmaker[Session], actor: str, jlog: JobLog
             ) -> dict[str, Any]:
    """Downloads the inputs into a private folder, compresses, uploads the artifacts; returns the metrics."""
    store = make_store(settings)
    progress = ProgressWriter(lease, factory, settings.progress_write_interval_s, jlog)
    progress(Progress(stage="loading", fraction=0.0))
    with tempfile.TemporaryDirectory(prefix=f"secateur-{lease.job_id}-") as tmp:
        work = Path(tmp)
        model = work / f"model{INPUT_SUFFIX.get(lease.model_format, '')}"
        dataset = work / f"dataset{INPUT_SUFFIX.get(lease.dataset_format, '')}"
        store.get_to_file(input_key(lease.tenant, lease.job_id, "model"), model)
        store.get_to_file(input_key(lease.tenant, lease.job_id, "dataset"), dataset)
        checkpoints = StorageCheckpoints(lease, store, factory, actor, jlog)
        report = _compress(model, dataset, JobConfig.model_validate(lease.config), work / "out", settings,
                           progress, checkpoints)
        progress(Progress(stage="uploading", fraction=0.99))
        for name in ARTIFACT_NAMES:
            store.put_file(artifact_key(lease.tenant, lease.job_id, name), work / "out" / name)
        progress.force(Progress(stage="uploading", fraction=1.0))
    jlog.info("artifacts uploaded")
    return summarize(report)


def _compress(model: Path, dataset: Path, config: JobConfig, out_dir: Path, settings: Settings,
              progress: ProgressWriter, checkpoints: StorageCheckpoints) -> dict[str, Any]:
    """Calls the engine (imported here: torch loads only in the child that runs a job); CUDA when present."""
    from workers.compression.pipeline import compress

    result = compress(model_path=model, dataset_path=dataset, config=config, out_dir=out_dir, device="auto",
                      threads=settings.torch_threads, on_progress=progress, checkpoints=checkpoints)
    return result.report


def _settle(lease: Lease, factory: sessionmaker[Session], actor: str, jlog: JobLog, *,
            stop: JobStopped | None = None, status: str = "failed", metrics: dict[str, Any] | None = None,
            code: str | None = None, message: str | None = None) -> str | None:
    """Writes the job's terminal state under the lease (a stop maps to `cancelled`, or nothing if lost)."""
    if stop is not None:
        if stop.reason != CANCEL_REQUESTED:
            jlog.warning("stopped (%s); the job belongs to another worker now, nothing written", stop.reason)
            return None
        status, code, message = "cancelled", None, None
    with session_scope(factory) as session:
        done = repository.finish_job(session, job_id=lease.job_id, epoch=lease.epoch, status=status,
                                     metrics=metrics, error_code=None if status == "succeeded" else code,
                                     error_message=None if status == "succeeded" else message)
        if done:
            repository.record_event(session, job_id=lease.job_id, epoch=lease.epoch, kind=status, actor=actor,
                                    detail={"code": code} if code else {})
    if not done:
        jlog.warning("could not record %s: the lease was lost meanwhile", status)
        return None
    jlog.info("finished: %s", status)
    return status
