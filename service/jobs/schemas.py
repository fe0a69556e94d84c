"""The API's JSON shapes for jobs (responses and errors), built from rows in one place."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, cast

from pydantic import BaseModel, Field
from pydantic.config import JsonDict

from service.bounds import bounded
from service.db.models import Job
from service.jobs.states import ACTIVE, TERMINAL
from workers.compression.hooks import STAGES

__all__ = ["ErrorBody", "ErrorOut", "JobInputs", "JobLinks", "JobOut", "JobPage", "JobStatus", "ProgressOut",
           "job_out"]

# The database's STATUSES (a CHECK constraint holds rows to them; tests/service/test_openapi.py, this to it).
JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
# The engine's stages (tests/engine/test_report.py holds it to them). An enum in the schema only: a stage
# the engine adds before this list learns it must not turn every read of that job into a 500.
_STAGE_SCHEMA: JsonDict = {"enum": [*STAGES, None], "description": "where a running job is; null if not"}


class ErrorOut(BaseModel):
    """A machine-readable code and a message a person can act on."""

    code: str = Field(examples=["invalid_model"])
    message: str = Field(examples=["the model file is neither ONNX nor safetensors"])


class ErrorBody(BaseModel):
    """Every error response: `{"error": {"code", "message"}}`."""

    error: ErrorOut


class ProgressOut(BaseModel):
    """How far a job is: fraction of the whole job, training epoch and step, estimated seconds left."""

    fraction: float = 0.0
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    eta_s: float | None = None
    metrics: dict[str, float] = {}  # the latest live training metrics (loss, accuracy, lr, ...)


class JobLinks(BaseModel):
    """Where to go next; a link is null while its target does not exist (e.g. the model before success)."""

    self: str
    report: str | None
    model: str | None
    model_zst: str | None
    events: str
    cancel: str | None


class JobInputs(BaseModel):
    """What a job runs on: the stored inputs it names (null: files sent with the job) and their sha256."""

    model_id: str | None
    dataset_id: str | None
    model_sha256: str
    dataset_sha256: str


class JobOut(BaseModel):
    """A job as the API shows it."""

    id: str
    status: JobStatus
    stage: str | None = Field(json_schema_extra=_STAGE_SCHEMA)
    progress: ProgressOut
    config: dict[str, Any] = Field(description="the job config as resolved (schema: JobConfig)")
    metrics: dict[str, Any] | None
    error: ErrorOut | None
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: JobLinks
    inputs: JobInputs
    rerun_of: str | None = Field(default=None, description="the job this one reruns (POST /jobs/{id}/rerun)")


class JobPage(BaseModel):
    """One page of jobs, newest first; pass `next_cursor` as `cursor` for the next (null at the end)."""

    jobs: list[JobOut]
    next_cursor: str | None


def _eta_s(job: Job, fraction: float, now: datetime) -> float | None:
    """Estimates seconds left from the fraction done and the running time so far (None when unknown)."""
    if job.status not in ACTIVE or job.started_at is None or not 0.0 < fraction < 1.0:
        return None
    elapsed = (now - job.started_at).total_seconds()
    return round(max(0.0, elapsed * (1.0 - fraction) / fraction), 1)


def job_out(job: Job, now: datetime) -> JobOut:
    """Builds the API view of a job row at time `now`."""
    raw = job.progress or {}
    fraction = float(raw.get("fraction", 1.0 if job.status == "succeeded" else 0.0))
    progress = ProgressOut(
        fraction=fraction,
        epoch=int(raw.get("epoch", 0)),
        epochs=int(raw.get("epochs", 0)),
        step=int(raw.get("step", 0)),
        eta_s=_eta_s(job, fraction, now),
        metrics={k: float(v) for k, v in (raw.get("metrics") or {}).items()
                 if isinstance(v, int | float) and not isinstance(v, bool)},
    )
    base = f"/jobs/{job.id}"
    done = job.status == "succeeded"
    links = JobLinks(
        self=base,
        report=f"{base}/report" if done else None,
        model=f"{base}/artifacts/model.onnx" if done else None,
        model_zst=f"{base}/artifacts/model.onnx.zst" if done else None,
        events=f"{base}/events",
        cancel=None if job.status in TERMINAL else f"{base}/cancel",
    )
    message = bounded(job.error_message or "")  # rows stored before messages were cut at write
    error = ErrorOut(code=job.error_code, message=message) if job.error_code else None
    return JobOut(id=job.id, status=cast(JobStatus, job.status), stage=job.stage, progress=progress,
                  config=job.config, metrics=job.metrics, error=error, attempt=job.attempt,
                  created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
                  links=links, rerun_of=job.rerun_of,
                  inputs=JobInputs(model_id=job.model_id, dataset_id=job.dataset_id,
                                   model_sha256=job.model_sha256, dataset_sha256=job.dataset_sha256))
