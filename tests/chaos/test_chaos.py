"""Fault injection on real processes: `secateur worker`s and the API on the suite's own PostgreSQL and
Redis. Faults go to PIDs this suite started (a worker, or the job child whose PID its claim event names),
never by process name. Every trial checks `tests.chaos.invariants` and records its recovery time.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import pytest

from service.db.models import JobEvent
from tests.chaos.cluster import Cluster
from tests.chaos.invariants import Verdict, judge
from tests.chaos.report import Trial
from tests.chaos.servers import OwnPostgres, OwnRedis
from tests.integration.processes import descendants

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def conclude(record: Trial, verdict: Verdict, recovery_s: float | None) -> None:
    """Fills the trial's record, then fails the test on any broken invariant."""
    record.lost, record.duplicates, record.recovery_s = int(verdict.lost), verdict.duplicates, recovery_s
    assert not verdict.problems, verdict.problems


def claims(cluster: Cluster, job_id: str) -> list[JobEvent]:
    """The job's claim events, in order."""
    return [e for e in cluster.events(job_id) if e.kind == "claimed"]


def claim_after(cluster: Cluster, job_id: str, epoch: int, timeout_s: float = 60) -> JobEvent:
    """Waits for a claim of the job under an epoch above `epoch` (a new attempt)."""
    return cluster.event(job_id, lambda e: e.kind == "claimed" and e.epoch > epoch, timeout_s=timeout_s,
                         what=f"job {job_id} to be claimed again")


def last_checkpoint(cluster: Cluster, job_id: str) -> dict[str, Any]:
    """The detail of the job's newest checkpoint event."""
    return [e.detail for e in cluster.events(job_id) if e.kind == "checkpoint"][-1]


def test_kill9_mid_finetune_resumes_on_a_new_worker(cluster: Cluster, record: Trial, trial: int) -> None:
    """(1) kill -9 the worker (its job child and its parent) mid-finetune; a new worker resumes from the
    checkpoint and the job succeeds."""
    record.scenario = "1 kill -9 worker mid-finetune"
    first = cluster.start_worker("w1")
    job_id = cluster.submit()
    cluster.checkpointed(job_id, 2)
    claim = claims(cluster, job_id)[-1]
    cluster.kill(cluster.child_of(first, claim), signal.SIGKILL)
    killed_at = cluster.kill(first.pid, signal.SIGKILL)
    saved = last_checkpoint(cluster, job_id)
    cluster.start_worker("w2")
    again = claim_after(cluster, job_id, claim.epoch)
    cluster.finished(job_id)
    verdict = judge(cluster, job_id, status="succeeded")
    resumed = [e.detail for e in cluster.events(job_id) if e.kind == "resumed"]
    if not resumed or resumed[-1]["epoch"] < saved["epoch"]:
        verdict.breach(f"resumed {resumed} below the last checkpoint before the kill {saved}")
    conclude(record, verdict, again.at.timestamp() - killed_at)


def test_sigstop_past_stale_then_sigcont_writes_are_rejected(cluster: Cluster, record: Trial, trial: int
                                                             ) -> None:
    """(2) SIGSTOP the job's process past the stale threshold; another worker takes over; after SIGCONT
    the frozen one notices its lost lease and nothing it writes lands."""
    record.scenario = "2 SIGSTOP worker past stale, SIGCONT"
    workers = [cluster.start_worker("w1"), cluster.start_worker("w2")]
    job_id = cluster.submit()
    cluster.checkpointed(job_id, 2)
    claim = claims(cluster, job_id)[-1]
    frozen = cluster.child_of(cluster.owner(workers, claim), claim)
    stopped_at = cluster.kill(frozen, signal.SIGSTOP)
    again = claim_after(cluster, job_id, claim.epoch)
    cluster.kill(frozen, signal.SIGCONT)
    noticed = cluster.event(job_id, lambda e: e.kind == "lease_lost" and e.epoch == claim.epoch,
                            timeout_s=30, what="the thawed worker to notice its lost lease")
    cluster.finished(job_id)
    verdict = judge(cluster, job_id, status="succeeded")
    if noticed.actor != claim.actor:
        verdict.breach(f"lease_lost by {noticed.actor}, the frozen worker was {claim.actor}")
    conclude(record, verdict, again.at.timestamp() - stopped_at)


def test_redis_restart_with_jobs_queued_and_running(cluster: Cluster, own_redis: OwnRedis, record: Trial,
                                                    trial: int) -> None:
    """(3) Redis stopped and restarted (nothing persisted: every queued wake-up is lost) while one job runs
    and two wait; the reaper re-sends the wake-ups and all three succeed once."""
    record.scenario = "3 Redis restart, jobs queued+running"
    cluster.start_worker("w1")
    jobs = [cluster.submit() for _ in range(3)]
    running = cluster.until(lambda: next((j for j in jobs if claims(cluster, j)), None), timeout_s=60,
                            what="a job to start")
    cluster.checkpointed(running, 1)
    own_redis.stop()
    time.sleep(3)
    own_redis.start()
    back_at = time.time()
    for job_id in jobs:
        cluster.finished(job_id, timeout_s=150)
    verdicts = [judge(cluster, job_id, status="succeeded") for job_id in jobs]
    verdict = Verdict(problems=[p for v in verdicts for p in v.problems],
                      duplicates=sum(v.duplicates for v in verdicts), lost=any(v.lost for v in verdicts))
    # Recovery: how long the worker sat idle, once both Redis and the worker were free again, before it
    # got to a waiting job (their wake-ups were lost with Redis; only the reaper's re-sends remain).
    done_at = cluster.row(running).finished_at
    assert done_at is not None
    free_at = max(back_at, done_at.timestamp())
    next_claim = min(claims(cluster, j)[0].at.timestamp() for j in jobs if j != running)
    conclude(record, verdict, next_claim - free_at)


def test_postgres_outage_answers_503_and_recovers(cluster: Cluster, own_postgres: OwnPostgres, record: Trial,
                                                  trial: int) -> None:
    """(4) PostgreSQL stopped for ~10 s mid-run: the API answers 503 (never 500, never a hang), and after
    the restart the API, the running job and an idempotent resubmission all recover."""
    record.scenario = "4 PostgreSQL down ~10 s mid-run"
    _, base = cluster.start_api()
    cluster.start_worker("w1")
    job_id = str(_submit(base, cluster, "chaos-first")[1]["id"])
    cluster.checkpointed(job_id, 1)
    own_postgres.stop()
    answers: list[int | str] = []
    down_until = time.monotonic() + 10
    while time.monotonic() < down_until:
        answers += [_status(base, "GET", f"/jobs/{job_id}"), _status(base, "GET", "/jobs"),
                    _submit(base, cluster, "chaos-retry")[0]]
        time.sleep(0.5)
    own_postgres.start()
    back_at = time.time()
    cluster.until(lambda: True if _status(base, "GET", f"/jobs/{job_id}") == 200 else None, timeout_s=30,
                  what="the API to answer 200 again")
    recovered_s = time.time() - back_at

    def accepted() -> dict[str, Any] | None:
        """The job of the resubmission once the API accepts it."""
        status, body = _submit(base, cluster, "chaos-retry")
        return body if status == 202 else None

    first = cluster.until(accepted, timeout_s=30, what="the idempotent resubmission")
    replay_status, replay = _submit(base, cluster, "chaos-retry")
    cluster.finished(job_id)
    resubmitted = str(first["id"])
    cluster.finished(resubmitted)
    verdict = judge(cluster, job_id, status="succeeded")
    extra = judge(cluster, resubmitted, status="succeeded")
    verdict.problems += extra.problems
    verdict.duplicates += extra.duplicates
    bad = [a for a in answers if a != 503]
    if bad:
        verdict.breach(f"answers during the outage other than 503: {bad}")
    if (replay_status, replay.get("id")) != (202, resubmitted):
        verdict.breach(f"replayed Idempotency-Key gave {replay_status} {replay.get('id')}, not {resubmitted}")
    conclude(record, verdict, recovered_s)


def _status(base: str, method: str, path: str) -> int | str:
    """The HTTP status of one request, or 'timeout'/'error' (a hang is a failure too)."""
    try:
        return httpx.request(method, f"{base}{path}", timeout=8).status_code
    except httpx.TimeoutException:
        return "timeout"
    except httpx.TransportError as exc:
        return f"error: {exc}"


def _submit(base: str, cluster: Cluster, key: str) -> tuple[int | str, dict[str, Any]]:
    """POSTs the chaos job with an Idempotency-Key; returns the status and the JSON body."""
    job = cluster.job
    try:
        with job.model.open("rb") as model, job.dataset.open("rb") as dataset:
            files = {"model": (job.model.name, model), "dataset": (job.dataset.name, dataset)}
            response = httpx.post(f"{base}/jobs", data={"config": job.config}, files=files,
                                  headers={"Idempotency-Key": key}, timeout=15)
    except httpx.TimeoutException:
        return "timeout", {}
    body: dict[str, Any] = response.json() if response.headers.get("content-type", "").startswith(
        "application/json") else {}
    return response.status_code, body


def test_each_wakeup_delivered_ten_times_to_two_workers_runs_once(cluster: Cluster, record: Trial,
                                                                 trial: int) -> None:
    """(5) Ten copies of a job's wake-up reach two workers: the job is claimed and run exactly once."""
    record.scenario = "5 wake-up x10 to 2 workers"
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    job_id = cluster.submit(wake=False)
    for _ in range(10):
        cluster.wake(job_id)
    cluster.finished(job_id)
    time.sleep(2)  # let the remaining copies reach a worker, to see them refused
    verdict = judge(cluster, job_id, status="succeeded")
    if len(claims(cluster, job_id)) != 1:
        verdict.breach(f"{len(claims(cluster, job_id))} claims", duplicate=True)
    conclude(record, verdict, None)


def test_poison_job_fails_worker_lost_after_max_attempts(cluster: Cluster, record: Trial, trial: int) -> None:
    """(6) A job whose process dies every time (kill -9 at each claim) ends failed/worker_lost after
    exactly max_attempts attempts."""
    record.scenario = "6 poison job (kills its worker)"
    worker = cluster.start_worker("w1")
    job_id = cluster.submit(max_attempts=3)
    epoch, kills, killed_at = 0, 0, 0.0
    while True:
        job = cluster.row(job_id)
        if job.status in ("failed", "succeeded", "cancelled"):
            break
        fresh = [c for c in claims(cluster, job_id) if c.epoch > epoch]
        if fresh:
            epoch = fresh[-1].epoch
            killed_at = cluster.kill(cluster.child_of(worker, fresh[-1]), signal.SIGKILL)
            kills += 1
        assert kills <= 5, "the job kept being retried"
        time.sleep(0.1)
    ended = cluster.finished(job_id)
    verdict = judge(cluster, job_id, status="failed", code="worker_lost")
    kinds = [e.kind for e in cluster.events(job_id)]
    if (kills, kinds.count("claimed"), kinds.count("requeued"), ended.attempt) != (3, 3, 2, 3):
        verdict.breach(f"{kills} kills, {kinds.count('claimed')} claims, {kinds.count('requeued')} requeues, "
                       f"attempt {ended.attempt}; expected 3, 3, 2, 3")
    assert ended.finished_at is not None
    conclude(record, verdict, ended.finished_at.timestamp() - killed_at)


def test_cancel_queued_and_running_jobs(cluster: Cluster, record: Trial, trial: int) -> None:
    """(7) A queued job cancelled never starts; a running one ends cancelled within the grace period, with
    no artifact and no checkpoint left."""
    record.scenario = "7 cancel queued + running"
    _, base = cluster.start_api()
    cluster.start_worker("w1")
    running, queued = str(_submit(base, cluster, "a")[1]["id"]), str(_submit(base, cluster, "b")[1]["id"])
    cluster.checkpointed(running, 1)
    assert httpx.post(f"{base}/jobs/{queued}/cancel", timeout=10).status_code == 202
    asked_at = time.time()
    assert httpx.post(f"{base}/jobs/{running}/cancel", timeout=10).status_code == 202
    ended = cluster.finished(running, timeout_s=30)
    assert ended.finished_at is not None
    took = ended.finished_at.timestamp() - asked_at
    time.sleep(4)  # the queued job's wake-up reaches the now idle worker, which must refuse it
    verdict = judge(cluster, running, status="cancelled")
    other = judge(cluster, queued, status="cancelled")
    verdict.problems += other.problems
    if claims(cluster, queued):
        verdict.breach("the cancelled queued job was claimed", duplicate=True)
    grace = cluster.settings.stop_grace_s + 2 * cluster.settings.heartbeat_interval_s
    if took > grace:
        verdict.breach(f"the running job took {took:.1f} s to end cancelled (grace {grace:.1f} s)")
    conclude(record, verdict, took)


def test_sigterm_mid_epoch_releases_and_another_worker_resumes(cluster: Cluster, record: Trial, trial: int
                                                               ) -> None:
    """(8) SIGTERM to the worker mid-epoch: it checkpoints at the epoch end, releases the job to the queue
    and exits within the grace period; the other worker resumes from that checkpoint."""
    record.scenario = "8 SIGTERM worker mid-epoch"
    workers = [cluster.start_worker("w1"), cluster.start_worker("w2")]
    job_id = cluster.submit()
    cluster.checkpointed(job_id, 2)
    claim = claims(cluster, job_id)[-1]
    leaving = cluster.owner(workers, claim)
    asked_at = cluster.kill(leaving.pid, signal.SIGTERM)
    released = cluster.event(job_id, lambda e: e.kind == "released", timeout_s=30, what="the release")
    try:
        leaving.wait(timeout=cluster.settings.shutdown_grace_s + 10)
        exited = True
    except Exception:
        exited = False
    again = claim_after(cluster, job_id, claim.epoch)
    ended = cluster.finished(job_id)
    verdict = judge(cluster, job_id, status="succeeded")
    if not exited:
        verdict.breach("the SIGTERMed worker did not exit within the grace period")
    if released.detail.get("refund") is not True or ended.attempt != 1:
        verdict.breach(f"a shutdown used up an attempt: {released.detail}, attempt {ended.attempt}")
    if any(pid in descendants(leaving.pid) for pid in [int(claim.detail["pid"])]):
        verdict.breach("the job process outlived its worker")
    conclude(record, verdict, again.at.timestamp() - asked_at)
