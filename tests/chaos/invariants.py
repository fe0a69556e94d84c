"""What every chaos trial asserts about a job, read from its row, its event log and its stored objects.

- it ends in the expected terminal state (and error code), and that state is its last word: exactly one
  terminal event, no lease-holder write after it;
- exactly one attempt ran at a time: claims carry strictly growing epochs, each new claim comes after the
  previous lease was handed back (requeued by the reaper or released by its worker), and every fenced
  write (stage, checkpoint, release, outcome) carries the epoch of the lease current at that moment;
- epochs only grow: per training phase, checkpointed epochs strictly increase over the whole job;
- resumed epochs ≥ last checkpoint: a resume loads exactly the newest checkpoint recorded before it, and
  the report's `resumed_from` is the last resume;
- exactly one artifact: a succeeded job has one model.onnx, model.onnx.zst and report.json next to its
  inputs and nothing else (no checkpoint left); any other job has only its inputs.
Each breach of exactly-once (a stale-epoch write, a second outcome, overlapping leases) also counts as a
duplicate effect for the reliability table.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from service.db.models import JobEvent
from service.storage.keys import artifact_key
from tests.chaos.cluster import Cluster

__all__ = ["Verdict", "judge"]

OUTCOMES = {"succeeded", "failed", "cancelled"}
HANDBACKS = {"requeued", "released"}  # a lease ends and the job goes back to queued
FENCED = {"stage", "checkpoint", "released", *OUTCOMES}  # written only under the current lease
INPUTS = ["inputs/dataset", "inputs/model"]
ARTIFACTS = ["artifacts/model.onnx", "artifacts/model.onnx.zst", "artifacts/report.json"]
CLEANUP_S = 10.0


@dataclass
class Verdict:
    """A trial's findings: broken invariants, duplicate effects among them, and whether the job was lost."""

    problems: list[str] = field(default_factory=list)
    duplicates: int = 0
    lost: bool = False

    def breach(self, problem: str, *, duplicate: bool = False) -> None:
        """Notes a broken invariant (and whether it is a duplicate effect)."""
        self.problems.append(problem)
        self.duplicates += int(duplicate)


def judge(cluster: Cluster, job_id: str, *, status: str, code: str | None = None) -> Verdict:
    """Checks every invariant of the module docstring on a finished job."""
    verdict = Verdict()
    job, events = cluster.row(job_id), cluster.events(job_id)
    if (job.status, job.error_code) != (status, code):
        verdict.lost = job.status not in OUTCOMES
        verdict.breach(f"ended {job.status}/{job.error_code}, expected {status}/{code}")
    _leases(events, verdict)
    _checkpoints(events, verdict)
    expected = sorted(INPUTS + ARTIFACTS if status == "succeeded" else INPUTS)
    # Checkpoints go right after the outcome is written (the worker, or the reaper's next sweep).
    deadline = time.monotonic() + CLEANUP_S
    while (stored := cluster.objects(job_id)) != expected or cluster.row(job_id).checkpoint_key is not None:
        if time.monotonic() > deadline:
            pointer = cluster.row(job_id).checkpoint_key
            verdict.breach(f"{CLEANUP_S} s after the end: objects {stored} (expected {expected}), "
                           f"checkpoint pointer {pointer} (expected none)")
            break
        time.sleep(0.2)
    if status == "succeeded" and "artifacts/report.json" in stored:
        key = artifact_key(job.tenant, job_id, "report.json")
        _report(json.loads(b"".join(cluster.store.open_stream(key))), events, verdict)
    return verdict


def _leases(events: list[JobEvent], verdict: Verdict) -> None:
    """One lease at a time, growing epochs, fenced writes under the current lease, one final outcome."""
    current: int | None = None  # the epoch of the lease that may write now (None: job queued)
    last_claim = 0
    outcomes = 0
    for event in events:
        if event.kind == "cancel_requested" and event.detail.get("status") == "cancelled":
            if current is not None:
                verdict.breach(f"a cancel ended the job while lease {current} was live", duplicate=True)
            outcomes += 1  # cancelled while queued: the API's own outcome, no worker involved
        elif event.kind == "claimed":
            if event.epoch <= last_claim:
                verdict.breach(f"claim at epoch {event.epoch} after one at {last_claim}", duplicate=True)
            if current is not None:
                verdict.breach(f"claim at epoch {event.epoch} while lease {current} was live", duplicate=True)
            current = last_claim = event.epoch
        elif event.kind in HANDBACKS:
            if current is None or event.epoch != current:
                verdict.breach(f"{event.kind} of epoch {event.epoch}, lease {current}", duplicate=True)
            current = None
        elif event.kind in FENCED:
            if event.actor.startswith("reaper@") and event.kind in OUTCOMES:
                ok = event.epoch == last_claim  # the reaper ends a lease it saw stale
            else:
                ok = current is not None and event.epoch == current
            if not ok:
                verdict.breach(f"{event.kind} by {event.actor} under epoch {event.epoch}, current {current}",
                               duplicate=True)
            if event.kind in OUTCOMES:
                outcomes += 1
                current = None
        if outcomes and event.kind in FENCED | {"claimed"} and event.kind not in OUTCOMES:
            verdict.breach(f"{event.kind} at epoch {event.epoch} after the job ended", duplicate=True)
    if outcomes != 1:
        verdict.breach(f"{outcomes} outcome events", duplicate=outcomes > 1)


def _checkpoints(events: list[JobEvent], verdict: Verdict) -> None:
    """Checkpointed epochs grow per phase; each resume loads the newest checkpoint recorded before it."""
    newest: dict[str, Any] | None = None
    seen: dict[str, int] = {}
    for event in events:
        if event.kind == "checkpoint":
            phase, epoch = event.detail["phase"], event.detail["epoch"]
            if epoch <= seen.get(phase, 0):
                verdict.breach(f"phase {phase} checkpointed epoch {epoch} again (had {seen[phase]})")
            seen[phase], newest = epoch, event.detail
        elif event.kind == "resumed" and (newest is None or event.detail.get("key") != newest["key"]):
            verdict.breach(f"resumed from {event.detail} but the newest checkpoint was {newest}")


def _report(report: dict[str, Any], events: list[JobEvent], verdict: Verdict) -> None:
    """The report's `resumed_from` names the last resume of the job (None when it never resumed)."""
    resumes = [e.detail for e in events if e.kind == "resumed"]
    expected = None
    if resumes:
        expected = {k: resumes[-1].get(k) for k in ("phase", "epoch", "attempt", "batch_size")}
    if report.get("resumed_from") != expected:
        verdict.breach(f"report resumed_from {report.get('resumed_from')}, events say {expected}")
