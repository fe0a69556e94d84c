"""The runner's recovery paths, in-process with the real engine: SIGTERM release and resume, CUDA
out-of-memory (a real `torch.OutOfMemoryError`, raised on CPU), infrastructure errors, max runtime,
the watchdog, and a lease lost under a running job. Faults are injected around the engine's progress
callback, at the step boundaries where real ones would be noticed.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import utcnow
from service.db.session import session_scope
from service.jobs import recovery, repository
from service.settings import Settings
from service.storage import ObjectStore
from service.storage.keys import artifact_key, checkpoint_key
from tests.integration.job_rows import (
    TENANT,
    event_kinds,
    events,
    factory,
    fetch,
    settings,
    store,
    submit,
    tiny,
)
from tests.integration.tiny_job import CONFIG, TinyJob
from workers import runner
from workers.compression.config import JobConfig
from workers.compression.hooks import Progress
from workers.compression.pipeline import compress
from workers.progress import ProgressWriter

__all__ = ["factory", "settings", "store", "tiny"]  # fixtures, imported to be found

THREE_EPOCHS = {**CONFIG, "finetune": {**CONFIG["finetune"], "epochs": 3}}
Fault = Callable[[Progress, int], None]  # called after each progress event with the engine call's number


@pytest.fixture
def woken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wake-ups the runner sends (recorded instead of going to a broker)."""
    sent: list[str] = []
    monkeypatch.setattr(runner, "send_wakeup", lambda job_id: sent.append(job_id) is None)
    return sent


def inject(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> list[JobConfig]:
    """Runs the real engine with `fault` after every progress event; returns the configs it got."""
    calls: list[JobConfig] = []

    def engine(model: Path, dataset: Path, config: JobConfig, out_dir: Path, settings: Settings,
               progress: ProgressWriter, checkpoints: Any, shared: Any = None) -> dict[str, Any]:
        """The real `_compress`, with the fault around its progress callback."""
        calls.append(config)

        def on_progress(event: Progress) -> None:
            """Forwards the event to the runner, then lets the fault strike."""
            progress(event)
            fault(event, len(calls))

        return compress(model_path=model, dataset_path=dataset, config=config, out_dir=out_dir,
                        on_progress=on_progress, checkpoints=checkpoints, baseline_cache=shared).report

    monkeypatch.setattr(runner, "_compress", engine)
    return calls


def report_of(store: ObjectStore, job_id: str) -> dict[str, Any]:
    """The job's stored report.json."""
    return json.loads(b"".join(store.open_stream(artifact_key(TENANT, job_id, "report.json"))))


def no_checkpoints_left(store: ObjectStore, factory: sessionmaker[Session], job_id: str) -> bool:
    """Tells whether the job's checkpoint pointer is cleared and none of its checkpoint keys exist."""
    keys = [e.detail["key"] for e in events(factory, job_id) if e.kind == "checkpoint"]
    return fetch(factory, job_id).checkpoint_key is None and not any(store.exists(k) for k in keys)


def test_sigterm_releases_at_the_epoch_end_and_the_next_attempt_resumes_there(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob,
    monkeypatch: pytest.MonkeyPatch, woken: list[str],
) -> None:
    """SIGTERM in epoch 1 stops at its end (after the checkpoint), releases without using an attempt; the
    next attempt resumes from epoch 1 and produces what an uninterrupted run produces."""
    reference = submit(factory, store, tiny, config=THREE_EPOCHS)
    assert runner.run_job(reference, settings=settings) == "succeeded"

    def sigterm_in_first_epoch(event: Progress, call: int) -> None:
        """Sends this process SIGTERM at the first training step, as a worker shutdown would."""
        if event.epoch == 1 and event.step == 1 and not event.epoch_end:
            os.kill(os.getpid(), signal.SIGTERM)

    inject(monkeypatch, sigterm_in_first_epoch)
    job_id = submit(factory, store, tiny, config=THREE_EPOCHS)
    assert runner.run_job(job_id, settings=settings) == "queued"
    job = fetch(factory, job_id)
    assert (job.status, job.attempt, job.epoch) == ("queued", 0, 2)
    assert woken == [job_id]
    kinds = event_kinds(factory, job_id)
    assert kinds == ["claimed", "preflight_passed", "checkpoint", "released"]
    monkeypatch.undo()
    monkeypatch.setattr(runner, "send_wakeup", lambda job_id: True)
    assert runner.run_job(job_id, settings=settings) == "succeeded"
    report = report_of(store, job_id)
    assert report["resumed_from"] == {"phase": "gradual", "epoch": 1, "attempt": 1, "batch_size": 64}
    assert report["attempt"] == 1
    expected = report_of(store, reference)
    assert report["pruned"]["accuracy"] == expected["pruned"]["accuracy"]
    assert [h["loss"] for h in report["history"]] == [h["loss"] for h in expected["history"]]
    assert no_checkpoints_left(store, factory, job_id)


def test_out_of_memory_halves_the_batch_and_later_attempts_keep_it(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob,
    monkeypatch: pytest.MonkeyPatch, woken: list[str],
) -> None:
    """An OOM in epoch 2 trains again at half the batch size (the engine's step schedules cannot resume a
    checkpoint at another batch size); a later attempt resumes at the batch size of its checkpoint."""
    def oom_then_shutdown(event: Progress, call: int) -> None:
        """OOM in epoch 2 of the first engine call; SIGTERM in epoch 1 of the second."""
        if call == 1 and event.epoch == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        if call == 2 and event.epoch == 1 and event.step == 1 and not event.epoch_end:
            os.kill(os.getpid(), signal.SIGTERM)

    calls = inject(monkeypatch, oom_then_shutdown)
    job_id = submit(factory, store, tiny, config=THREE_EPOCHS)
    assert runner.run_job(job_id, settings=settings) == "queued"
    assert [c.finetune.batch_size for c in calls] == [64, 32]
    assert "oom_retry" in event_kinds(factory, job_id)
    assert runner.run_job(job_id, settings=settings) == "succeeded"
    assert [c.finetune.batch_size for c in calls] == [64, 32, 32]
    report = report_of(store, job_id)
    assert report["resumed_from"] == {"phase": "gradual", "epoch": 1, "attempt": 1, "batch_size": 32}
    assert report["oom_retries"] == []  # this attempt met none; the event log keeps the earlier one
    assert report["config"]["finetune"]["batch_size"] == 32


def test_out_of_memory_every_time_fails_after_the_allowed_halvings(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With oom_retries=2 the engine is tried three times (64, 32, 16), then the job fails out_of_memory."""
    def always_oom(event: Progress, call: int) -> None:
        """Raises OOM at the first training step of every call."""
        if event.epoch == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    calls = inject(monkeypatch, always_oom)
    job_id = submit(factory, store, tiny)
    assert runner.run_job(job_id, settings=settings.model_copy(update={"oom_retries": 2})) == "failed"
    assert [c.finetune.batch_size for c in calls] == [64, 32, 16]
    job = fetch(factory, job_id)
    assert job.error_code == "out_of_memory"
    assert job.attempt == 1  # a user-visible limit, not retried on another attempt


def test_infrastructure_errors_are_retried_on_another_attempt_until_none_is_left(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob,
    monkeypatch: pytest.MonkeyPatch, woken: list[str],
) -> None:
    """A database blip inside the job releases it (attempt kept) and wakes a worker; on the last allowed
    attempt it fails infrastructure_error instead."""
    def blip(event: Progress, call: int) -> None:
        """Raises a database error at the first training step."""
        if event.epoch == 1:
            raise OperationalError("UPDATE jobs", {}, ConnectionError("server closed the connection"))

    inject(monkeypatch, blip)
    job_id = submit(factory, store, tiny, max_attempts=2)
    assert runner.run_job(job_id, settings=settings) == "queued"
    job = fetch(factory, job_id)
    assert (job.status, job.attempt) == ("queued", 1)
    assert woken == [job_id]
    assert runner.run_job(job_id, settings=settings) == "failed"
    job = fetch(factory, job_id)
    assert (job.status, job.error_code, job.attempt) == ("failed", "infrastructure_error", 2)
    assert no_checkpoints_left(store, factory, job_id)


def test_max_runtime_fails_the_job(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job past max_runtime_s is stopped at the next step after a heartbeat notices: failed/max_runtime."""
    def slow(event: Progress, call: int) -> None:
        """Makes every training step take long enough that training outlasts the limit even when the
        process is warm (the check can only stop the job at a step boundary)."""
        if event.epoch:
            time.sleep(0.2)

    inject(monkeypatch, slow)
    job_id = submit(factory, store, tiny, config=THREE_EPOCHS)
    quick = settings.model_copy(update={"max_runtime_s": 0.5, "heartbeat_interval_s": 0.05})
    assert runner.run_job(job_id, settings=quick) == "failed"
    job = fetch(factory, job_id)
    assert job.error_code == "max_runtime"
    assert no_checkpoints_left(store, factory, job_id)


def test_the_watchdog_cancels_a_job_stuck_between_step_boundaries(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancel the engine cannot see (it hangs in a long stage) is settled by the heartbeat thread within
    the grace period, which then ends the job process."""
    exits: list[int] = []
    unstuck = threading.Event()

    def hang_until_the_process_ends(*args: Any) -> dict[str, Any]:
        """Cancels the job, then blocks as a hung export would, until the watchdog ends the 'process'."""
        progress = args[5]
        with session_scope(factory) as session:
            repository.request_cancel(session, tenant=TENANT, job_id=progress.lease.job_id)
        assert unstuck.wait(10), "the watchdog never fired"
        raise SystemExit(75)  # what os._exit would have done, without killing pytest

    def fake_exit(code: int) -> None:
        """Records the exit the watchdog asked for and lets the 'process' end."""
        exits.append(code)
        unstuck.set()

    monkeypatch.setattr(runner, "_compress", hang_until_the_process_ends)
    job_id = submit(factory, store, tiny)
    quick = settings.model_copy(update={"heartbeat_interval_s": 0.05, "stop_grace_s": 0.3})
    started = time.monotonic()
    with pytest.raises(SystemExit):
        runner.run_job(job_id, settings=quick, exit_process=fake_exit)
    assert time.monotonic() - started < 5
    assert exits == [runner.EXIT_OVERDUE]
    assert fetch(factory, job_id).status == "cancelled"
    assert event_kinds(factory, job_id).count("cancelled") == 1


def test_a_lease_lost_mid_run_stops_the_job_without_a_write(
    settings: Settings, factory: sessionmaker[Session], store: ObjectStore, tiny: TinyJob,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the reaper takes the job back mid-epoch, the worker stops at a step boundary, records that it
    saw the loss, and writes nothing else: no checkpoint, no outcome, no artifact."""
    def reaped_at_first_step(event: Progress, call: int) -> None:
        """Requeues the job under the worker's feet (what the reaper does to a stale lease)."""
        if event.epoch == 1 and event.step == 1:
            with session_scope(factory) as session:
                job = repository.get_job_any_tenant(session, job_id=job_id)
                assert job is not None
                later = utcnow() + timedelta(hours=1)  # every heartbeat is older than this
                assert recovery.requeue_lost(session, job_id=job_id, epoch=job.epoch, cutoff=later)

    inject(monkeypatch, reaped_at_first_step)
    job_id = submit(factory, store, tiny, config=THREE_EPOCHS)
    assert runner.run_job(job_id, settings=settings.model_copy(update={"heartbeat_interval_s": 0.05})) is None
    job = fetch(factory, job_id)
    assert (job.status, job.checkpoint_key) == ("queued", None)
    assert event_kinds(factory, job_id) == ["claimed", "preflight_passed", "lease_lost"]
    assert not store.exists(artifact_key(TENANT, job_id, "model.onnx"))
    assert not store.exists(f"{checkpoint_key(TENANT, job_id)}.1.1")
