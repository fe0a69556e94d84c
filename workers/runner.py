"""The job runner: claim (fenced) → heartbeat → fetch inputs → compress → upload artifacts → fenced commit.

Every write after the claim carries the lease's epoch, so a worker that lost its lease (reaped, or a
duplicate) can change nothing. A claimed job always leaves its worker one way (`workers.settle`):
finished (succeeded, failed, cancelled), released to the queue (SIGTERM, an infrastructure error with
attempts left), or untouched because the lease is lost. Errors are sorted: a user's bad input fails at
once; database, storage and network trouble is retried on another attempt; CUDA out-of-memory halves the
batch size and trains again (up to `oom_retries` times). Torch is imported only inside `_compress`, in
the child process that runs the job.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from service.db.session import make_engine, make_session_factory, session_scope
from service.jobs import repository
from service.jobs.stored_inputs import job_input_key
from service.queue import send_wakeup
from service.settings import Settings
from service.storage import ObjectNotFound, StorageError, make_store
from service.storage.keys import ARTIFACT_NAMES, artifact_key
from workers.ceiling import ceiling_for, model_cost, out_of_host_memory, watched
from workers.checkpoints import StorageCheckpoints
from workers.compression.config import JobConfig
from workers.compression.errors import CompressionError, JobStopped
from workers.compression.hooks import Progress
from workers.compression.preflight_verdict import PASSED as PREFLIGHT_PASSED
from workers.compression.preflight_verdict import REFUSED as PREFLIGHT_REFUSED
from workers.heartbeat import (
    CANCEL_REQUESTED,
    DB_ERRORS,
    LEASE_LOST,
    RESOURCES_EXCEEDED,
    SHUTDOWN,
    LeaseGuard,
    stronger,
)
from workers.lease import JobLog, Lease, retry_db, worker_id
from workers.progress import ProgressWriter
from workers.rerun import rerun_fields
from workers.settle import Settler
from workers.sweep_baseline import SweepBaseline

__all__ = ["CANCEL_REQUESTED", "LEASE_LOST", "JobLog", "Lease", "OutOfMemory", "ProgressWriter",
           "StorageCheckpoints", "dispose_engines", "run_job", "session_factory", "summarize", "worker_id"]

INPUT_SUFFIX = {"onnx": ".onnx", "safetensors": ".safetensors", "npz": ".npz", "zip": ".zip",
                "tar": ".tar", "tar.gz": ".tar.gz"}
# Trouble outside the job's inputs: another attempt (maybe on another machine) may well succeed.
INFRA_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, StorageError, ConnectionError, TimeoutError)
EXIT_OVERDUE = 75  # EX_TEMPFAIL: the job process gave up on a job that ignored its stop request

log = logging.getLogger(__name__)
_engines: dict[str, Engine] = {}


class OutOfMemory(CompressionError):
    """The model does not fit on the device even after halving the batch size: retrying cannot help."""

    code = "out_of_memory"


def session_factory(settings: Settings) -> sessionmaker[Session]:
    """Returns a session factory on this process's engine for the settings' database (one per URL)."""
    engine = _engines.get(settings.database_url)
    if engine is None:
        engine = make_engine(settings.database_url, connect_timeout_s=settings.db_connect_timeout_s,
                             statement_timeout_s=settings.db_statement_timeout_s)
        if engine.dialect.name == "postgresql":
            # A frozen worker (SIGSTOP, swapped out) must not hold a row lock the reaper needs: the server
            # ends a transaction left idle this long. Ours last milliseconds.
            idle_ms = int(max(1.0, settings.stale_after_s / 2) * 1000)
            event.listen(engine, "connect", lambda conn, _: _set_idle_timeout(conn, idle_ms))
        _engines[settings.database_url] = engine
    return make_session_factory(engine)


def _set_idle_timeout(dbapi_connection: Any, idle_ms: int) -> None:
    """Sets PostgreSQL's idle_in_transaction_session_timeout on a new connection."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute(f"SET idle_in_transaction_session_timeout = {idle_ms}")
    dbapi_connection.commit()


def dispose_engines() -> None:
    """Forgets engines inherited through fork without closing the parent's connections (SQLAlchemy recipe)."""
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The job's `metrics`: the headline figures of report.json (the full report is an artifact)."""
    sides = {side: {key: report[side].get(key) for key in
                    ("accuracy", "ort_accuracy", "params", "nonzero_params", "flops", "onnx_bytes",
                     "onnx_zstd_bytes", "latency_ms")}
             for side in ("baseline", "pruned")}
    return {**sides, "achieved": report.get("target", {}).get("achieved", {}),
            "verification_passed": report.get("verification", {}).get("passed"),
            "timings_s": report.get("timings_s", {}), "attempt": report.get("attempt"),
            "resumed_from": report.get("resumed_from"), "oom_retries": report.get("oom_retries", []),
            **{key: report[key] for key in ("rerun_of", "reproduced") if key in report}}


def run_job(job_id: str, *, settings: Settings, actor: str | None = None,
            exit_process: Callable[[int], object] = os._exit) -> str | None:
    """Runs one job to its end; returns the status it left (None when it was not ours, or lost)."""
    actor = actor or worker_id()
    factory = session_factory(settings)
    with session_scope(factory) as session:
        job = repository.claim_job(session, job_id=job_id, worker_id=actor)
        if job is None:
            JobLog(log, {"job_id": job_id}).info("not queued any more: duplicate wake-up ignored")
            return None
        lease = Lease(job.id, job.tenant, job.epoch, job.attempt, dict(job.config), job.model_format,
                      job.dataset_format, job.max_attempts, job.started_at, model_id=job.model_id,
                      dataset_id=job.dataset_id, rerun_of=job.rerun_of)
        repository.record_event(session, job_id=job_id, epoch=lease.epoch, kind="claimed", actor=actor,
                                detail={"attempt": lease.attempt, "pid": os.getpid()})
    return JobRun(lease, settings, factory, actor, exit_process).run()


class JobRun:
    """One attempt at one job, from a fresh claim to its outcome."""

    def __init__(self, lease: Lease, settings: Settings, factory: sessionmaker[Session], actor: str,
                 exit_process: Callable[[int], object]) -> None:
        self.lease, self.settings, self.factory, self.actor = lease, settings, factory, actor
        self.exit_process = exit_process
        self.ceiling_detail = ""  # why the ceiling stopped the job, for its error message
        self.log = JobLog(log, {"job_id": lease.job_id, "epoch": lease.epoch})
        self.store = make_store(settings)
        assert lease.started_at is not None  # a claim sets it
        self.guard = LeaseGuard(job_id=lease.job_id, epoch=lease.epoch, started_at=lease.started_at,
                                factory=factory, settings=settings, on_overdue=self._overdue)
        self.settler = Settler(lease, settings, factory, self.store, actor, self.log, send_wakeup,
                               on_settled=self.guard.close)

    def run(self) -> str | None:
        """Executes the attempt and settles it, whatever happens (heartbeat and SIGTERM handler meanwhile)."""
        self.log.info("claimed by %s (attempt %d of %d)", self.actor, self.lease.attempt,
                      self.lease.max_attempts)
        with self._sigterm_requests_shutdown():
            self.guard.start()
            try:
                return self._run()
            finally:
                self.guard.close()

    @contextmanager
    def _within_ceiling(self, model: Path) -> Iterator[None]:
        """Holds the compression under its memory ceiling and CPU budget (workers/ceiling.py)."""
        config = JobConfig.model_validate(self.lease.config)
        ceiling = ceiling_for(self.settings, model_cost(model, self.lease.model_format),
                              config.finetune.batch_size)
        self.ceiling_detail = f"it crossed its ceiling ({ceiling.describe()})"

        def exceeded(detail: str) -> None:
            self.ceiling_detail = detail
            self.log.warning("resources exceeded: %s", detail)
            self.guard.request(RESOURCES_EXCEEDED)

        with watched(ceiling, cuda=_uses_cuda(), last_step_cpu_s=lambda: self.guard.step_cpu_s,
                     on_exceeded=exceeded):
            yield

    def _run(self) -> str | None:
        """Sorts the attempt's outcome: success, a stop, a user error, infrastructure trouble or a bug."""
        try:
            metrics = self._execute()
        except JobStopped as stop:
            reason = stronger(stop.reason, self.guard.reason)
            return self.settler.once(lambda: self.settler.stop(reason, self.ceiling_detail))
        except CompressionError as exc:
            if out_of_host_memory(exc):  # a loader that typed the allocation failure as a bad input
                return self._exceeded_memory()
            self.log.info("failed: %s: %s", exc.code, exc.message)
            code, message = exc.code, exc.message
            return self.settler.once(lambda: self.settler.finish("failed", code=code, message=message))
        except INFRA_ERRORS as exc:
            if isinstance(exc, ObjectNotFound):  # a missing input will not come back: no retry
                return self._crashed(exc)
            trouble = exc
            return self.settler.once(lambda: self._retry_later(trouble))
        except BaseException as exc:
            if out_of_host_memory(exc):
                return self._exceeded_memory()
            if _disk_full(exc):  # the worker's disk, not the input: another attempt may find room
                full = exc
                return self.settler.once(lambda: self._retry_later(full))
            self._crashed(exc)
            if not isinstance(exc, Exception):
                raise  # SystemExit / KeyboardInterrupt: the job is settled, the process still stops
            return "failed"
        return self.settler.once(lambda: self.settler.finish("succeeded", metrics=metrics))

    def _exceeded_memory(self) -> str | None:
        """Fails the job resources_exceeded: an allocation failed under its address-space ceiling."""
        self.log.info("failed: out of memory under the job's ceiling")
        message = f"the job was stopped: it needed more memory than its ceiling ({self.ceiling_detail})"
        return self.settler.once(lambda: self.settler.finish("failed", code=RESOURCES_EXCEEDED,
                                                             message=message))

    def _crashed(self, exc: BaseException) -> str | None:
        """Fails the job as an internal error (a bug, or an input gone from storage), with its trace."""
        self.log.error("crashed", exc_info=exc)
        message = f"the worker hit an unexpected error ({type(exc).__name__}); see the worker log"
        return self.settler.once(lambda: self.settler.finish("failed", code="internal_error",
                                                             message=message))

    def _retry_later(self, exc: BaseException) -> str | None:
        """Releases the job for another attempt after infrastructure trouble; fails it when none is left."""
        self.log.warning("infrastructure error (%s: %s)", type(exc).__name__, exc)
        if self.lease.attempt >= self.lease.max_attempts:
            return self.settler.finish("failed", code="infrastructure_error",
                                       message=f"{self.lease.attempt} attempts met infrastructure errors; "
                                               f"the last one: {type(exc).__name__}")
        return self.settler.release(refund=False, reason=f"infrastructure_error: {type(exc).__name__}")

    def _overdue(self, reason: str) -> None:
        """The watchdog's last resort: settle for `reason` from the heartbeat thread, then end the process."""
        if self.settler.try_once(lambda: self.settler.stop(reason, self.ceiling_detail)):
            self.exit_process(EXIT_OVERDUE)
        # else the runner's thread settled or is settling the job right now: it returns on its own

    @contextmanager
    def _sigterm_requests_shutdown(self) -> Iterator[None]:
        """While the job runs, SIGTERM asks it to checkpoint and release (main thread only: Python's rule)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGTERM, lambda *_: self.guard.request(SHUTDOWN))
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _execute(self) -> dict[str, Any]:
        """Fetches the inputs into a private folder, compresses, uploads the artifacts; returns metrics."""
        lease, store = self.lease, self.store
        progress = ProgressWriter(lease, self.factory, self.settings.progress_write_interval_s, self.log,
                                  guard=self.guard, actor=self.actor)
        progress(Progress(stage="loading", fraction=0.0))
        with tempfile.TemporaryDirectory(prefix=f"secateur-{lease.job_id}-") as tmp:
            work = Path(tmp)
            model = work / f"model{INPUT_SUFFIX.get(lease.model_format, '')}"
            dataset = work / f"dataset{INPUT_SUFFIX.get(lease.dataset_format, '')}"
            store.get_to_file(job_input_key(lease.tenant, lease.job_id, "model", lease.model_id), model)
            store.get_to_file(job_input_key(lease.tenant, lease.job_id, "dataset", lease.dataset_id), dataset)
            checkpoints = StorageCheckpoints(lease, store, self.factory, self.actor, self.log)
            with self._within_ceiling(model):  # pre-flight runs the model too
                self._preflight(model, dataset)
                report = self._compress_within_memory(model, dataset, work / "out", progress, checkpoints)
            report.update(attempt=lease.attempt, resumed_from=checkpoints.resumed_from)
            if lease.rerun_of is not None:  # compare with the original: kept weights and accuracies
                report.update(rerun_fields(store, lease.tenant, lease.rerun_of, report))
            _write_report(work / "out" / "report.json", report)
            progress.force(Progress(stage="uploading", fraction=0.99))
            self._confirm_lease()  # the artifacts' keys are shared by every attempt: only the owner writes
            for name in ARTIFACT_NAMES:
                store.put_file(artifact_key(lease.tenant, lease.job_id, name), work / "out" / name)
            progress.force(Progress(stage="uploading", fraction=1.0))
        self.log.info("artifacts uploaded")
        return summarize(report)

    def _preflight(self, model: Path, dataset: Path) -> None:
        """Runs the engine's pre-flight on the inputs and records its verdict on the job (an event); a job
        it refuses fails now with pre-flight's own code, before any training (see preflight_verdict)."""
        from workers.compression.preflight import job_verdict  # torch loads in the job's process only

        verdict, refusal = job_verdict(model, dataset, JobConfig.model_validate(self.lease.config),
                                       threads=self.settings.torch_threads)
        self.settler.note(PREFLIGHT_PASSED if refusal is None else PREFLIGHT_REFUSED, verdict)
        if refusal is not None:
            raise refusal

    def _compress_within_memory(self, model: Path, dataset: Path, out_dir: Path, progress: ProgressWriter,
                                checkpoints: StorageCheckpoints) -> dict[str, Any]:
        """Compresses; on out-of-memory halves the batch size and trains again (up to `oom_retries` times).

        The engine's step-based schedules cannot resume a checkpoint at another batch size, so a halving
        restarts training; a later attempt resumes at the batch size its checkpoint was taken with.
        """
        config = JobConfig.model_validate(self.lease.config)
        resume = checkpoints.peek()
        if resume is not None and resume.get("batch_size"):
            config = _with_batch_size(config, int(resume["batch_size"]))
        retries: list[dict[str, Any]] = []
        oom = _oom_errors()
        shared = SweepBaseline(self.factory, self.lease.job_id, self.log)  # a sweep's points measure it once
        while True:
            checkpoints.batch_size = config.finetune.batch_size
            try:
                report = _compress(model, dataset, config, out_dir, self.settings, progress, checkpoints,
                                   shared)
                report["oom_retries"] = retries
                if shared.report() is not None:
                    report["baseline_shared"] = shared.report()
                return report
            except oom as exc:
                size = config.finetune.batch_size
                if len(retries) >= self.settings.oom_retries or size == 1:
                    raise OutOfMemory(
                        f"out of device memory at batch size {size} after {len(retries)} halvings; use a "
                        "smaller batch_size or a device with more memory") from exc
                config = _with_batch_size(config, max(1, size // 2))
                retries.append({"batch_size": config.finetune.batch_size, "stage": progress.stage,
                                "error": str(exc)[:200]})
                self.log.warning("out of memory at batch size %d; training again at %d", size,
                                 config.finetune.batch_size)
                self.settler.note("oom_retry", retries[-1])
                checkpoints.start_fresh()
                _free_device_memory()

    def _confirm_lease(self) -> None:
        """Renews the lease right now (through a database outage); JobStopped if it is lost or cancelled."""
        status = retry_db(self.factory, lambda session: repository.heartbeat(
            session, job_id=self.lease.job_id, epoch=self.lease.epoch), for_s=self.settings.db_outage_retry_s,
            what="confirming the lease", jlog=self.log)
        if status is None:
            self.guard.request(LEASE_LOST)
            raise JobStopped(LEASE_LOST)
        if status == "cancelling":
            raise JobStopped(CANCEL_REQUESTED)


def _disk_full(exc: BaseException) -> bool:
    """Tells whether an error (or one it was raised from) is a full disk or an exhausted quota."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _uses_cuda() -> bool:
    """Tells whether the engine will pick CUDA (device "auto"); asked without starting a CUDA context."""
    import torch

    return bool(torch.cuda.is_available())


def _with_batch_size(config: JobConfig, batch_size: int) -> JobConfig:
    """Returns the config with another finetuning batch size."""
    finetune = config.finetune.model_copy(update={"batch_size": batch_size})
    return config.model_copy(update={"finetune": finetune})


def _write_report(path: Path, report: dict[str, Any]) -> None:
    """Rewrites report.json with the attempt's facts (attempt, resumed_from, oom_retries) added."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def _oom_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean 'out of device memory' (torch's; imported only in the job process)."""
    import torch

    return (torch.OutOfMemoryError,)


def _free_device_memory() -> None:
    """Returns cached CUDA blocks to the driver before a retry at a smaller batch size."""
    import torch

    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.empty_cache()


def _compress(model: Path, dataset: Path, config: JobConfig, out_dir: Path, settings: Settings,
              progress: ProgressWriter, checkpoints: StorageCheckpoints, shared: SweepBaseline,
              ) -> dict[str, Any]:
    """Calls the engine (imported here: torch loads only in the child that runs a job); CUDA when present."""
    from workers.compression.pipeline import compress

    result = compress(model_path=model, dataset_path=dataset, config=config, out_dir=out_dir, device="auto",
                      threads=settings.torch_threads, on_progress=progress, checkpoints=checkpoints,
                      baseline_cache=shared)
    return result.report
