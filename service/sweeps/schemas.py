"""The API's JSON shapes for sweeps, and the view of a sweep built from its rows in one place."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.db.models import Job, Sweep, SweepPoint
from service.jobs.schemas import ErrorOut
from service.jobs.states import TERMINAL
from service.sweeps.pareto import front, fronts
from service.sweeps.targets import MAX_POINTS, TargetRange

__all__ = ["PointOut", "SweepCreated", "SweepIn", "SweepOut", "SweepPage", "SweepStatus", "sweep_out",
           "sweep_status"]

SweepStatus = Literal["running", "succeeded", "failed", "cancelled"]


class SweepIn(BaseModel):
    """`POST /sweeps`: stored inputs, one config, and the targets to try (a list, or a range)."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=36)
    dataset_id: str = Field(min_length=1, max_length=36)
    config: dict[str, Any] = Field(description="a job config without `target` (schema: JobConfig); "
                                               "`webhook_url` in it applies to every point's job")
    targets: list[dict[str, Any]] | None = Field(
        default=None, max_length=MAX_POINTS, examples=[[{"pruning_ratio": 0.3}, {"pruning_ratio": 0.5}]])
    range: TargetRange | None = Field(default=None, description="instead of `targets`: evenly spaced ones")


class SweepCreated(BaseModel):
    """The answer to `POST /sweeps`: the sweep's id and its points' job ids, in target order."""

    id: str
    jobs: list[str]


class PointOut(BaseModel):
    """One point: its target, its job's status and, once it succeeded, the pruned model's figures."""

    job_id: str
    target: dict[str, Any]
    status: str
    accuracy: float | None = None
    flops: int | None = None
    params: int | None = None
    onnx_bytes: int | None = None
    latency_ms: dict[str, float] | None = None
    achieved: dict[str, float] | None = Field(default=None,
                                              description="flops_reduction, params_reduction, sparsity, …")
    error: ErrorOut | None = None


class SweepOut(BaseModel):
    """A sweep: derived status, the dense baseline, its points and the Pareto front over them."""

    id: str
    status: SweepStatus
    model_id: str
    dataset_id: str
    config: dict[str, Any]
    created_at: datetime
    cancelled_at: datetime | None
    baseline: dict[str, Any] | None = Field(description="the dense model's figures, measured once per sweep")
    points: list[PointOut]
    pareto: list[str] = Field(description="job ids no other point beats on accuracy and on FLOPs, latency "
                                          "(batch 1) and ONNX size at once")
    pareto_by: dict[str, list[str]] = Field(description="the front of accuracy against each cost alone")


class SweepPage(BaseModel):
    """One page of sweeps, newest first; pass `next_cursor` as `cursor` for the next (null at the end)."""

    sweeps: list[SweepOut]
    next_cursor: str | None


def sweep_status(statuses: list[str], cancelled: bool) -> SweepStatus:
    """`running` until every point is terminal; then succeeded if all did, else cancelled or failed."""
    if not statuses or any(s not in TERMINAL for s in statuses):
        return "running"
    if all(s == "succeeded" for s in statuses):
        return "succeeded"
    if cancelled or "failed" not in statuses:
        return "cancelled"
    return "failed"


def _point(point: SweepPoint, job: Job) -> PointOut:
    """Builds one point's view from its job (figures from the job's metrics once it succeeded)."""
    pruned = (job.metrics or {}).get("pruned") or {}
    error = ErrorOut(code=job.error_code, message=job.error_message or "") if job.error_code else None
    return PointOut(job_id=job.id, target=point.target, status=job.status, accuracy=pruned.get("accuracy"),
                    flops=pruned.get("flops"), params=pruned.get("params"),
                    onnx_bytes=pruned.get("onnx_bytes"), latency_ms=pruned.get("latency_ms"),
                    achieved=(job.metrics or {}).get("achieved"), error=error)


def _baseline(jobs: list[Job]) -> dict[str, Any] | None:
    """The dense model's figures, as the first succeeded point reports them (every point shares them)."""
    for job in jobs:
        if job.status == "succeeded" and (job.metrics or {}).get("baseline"):
            return dict((job.metrics or {})["baseline"])
    return None


def sweep_out(sweep: Sweep, rows: list[tuple[SweepPoint, Job]]) -> SweepOut:
    """Builds the API view of a sweep from its row and its (point, job) rows in position order."""
    points = [_point(point, job) for point, job in rows]
    measured = [p.model_dump() for p in points if p.status == "succeeded"]
    status = sweep_status([p.status for p in points], sweep.cancelled_at is not None)
    return SweepOut(id=sweep.id, status=status,
                    model_id=sweep.model_id, dataset_id=sweep.dataset_id, config=sweep.config,
                    created_at=sweep.created_at, cancelled_at=sweep.cancelled_at,
                    baseline=_baseline([job for _, job in rows]), points=points, pareto=front(measured),
                    pareto_by=fronts(measured))
