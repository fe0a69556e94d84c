"""`GET /metrics`: a valid Prometheus exposition whose job figures follow the database."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.live import Live, serve

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server for the module."""
    with serve(tmp_path_factory.mktemp("server")) as server:
        yield server


def scrape(live: Live) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrapes /metrics and parses it with prometheus_client's own parser: {(sample, labels): value}."""
    response = httpx.get(f"{live.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def jobs(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], status: str) -> float:
    """The secateur_jobs gauge for one status."""
    return samples[("secateur_jobs", (("status", status),))]


def test_job_gauges_follow_state_changes(live: Live) -> None:
    before = scrape(live)
    assert {jobs(before, s) for s in ("queued", "running", "succeeded")} == {0.0}
    assert ("secateur_worker_heartbeat_age_seconds", ()) not in before  # nothing runs
    job_id = live.worker.insert()
    live.worker.insert()
    queued = scrape(live)
    assert jobs(queued, "queued") == 2
    assert queued[("secateur_queue_depth", ())] == 2
    assert queued[("secateur_queue_oldest_age_seconds", ())] >= 0
    lease = live.worker.claim(job_id)
    live.worker.progress(job_id, lease, "finetuning", fraction=0.5, gpu_memory_bytes=123456789)
    running = scrape(live)
    assert (jobs(running, "queued"), jobs(running, "running")) == (1, 1)
    assert 0 <= running[("secateur_worker_heartbeat_age_seconds", ())] < 30
    assert running[("secateur_workers_busy", ())] == 1
    assert running[("secateur_worker_gpu_memory_bytes", (("worker", "fake-worker"),))] == 123456789
    timings = {"pruning": 2.0, "finetuning": 70.0}
    live.worker.finish(job_id, lease, "succeeded", metrics={"timings_s": timings})
    done = scrape(live)
    assert (jobs(done, "running"), jobs(done, "succeeded")) == (0, 1)
    assert done[("secateur_job_duration_seconds_count", (("status", "succeeded"),))] == 1
    assert done[("secateur_stage_duration_seconds_sum", (("stage", "finetuning"),))] == 70.0
    assert done[("secateur_stage_duration_seconds_bucket", (("le", "60.0"), ("stage", "finetuning")))] == 0
    assert done[("secateur_stage_duration_seconds_bucket", (("le", "120.0"), ("stage", "finetuning")))] == 1
    assert done[("secateur_job_queue_wait_seconds_count", ())] == 1
    again = scrape(live)  # a second scrape does not count the same finished job twice
    assert again[("secateur_job_duration_seconds_count", (("status", "succeeded"),))] == 1
    assert ("secateur_worker_gpu_memory_bytes", (("worker", "fake-worker"),)) not in again


def test_http_latency_is_labelled_by_route_template(live: Live) -> None:
    job_id = live.worker.insert()
    for _ in range(2):
        assert httpx.get(f"{live.url}/jobs/{job_id}").status_code == 200
    assert httpx.get(f"{live.url}/jobs/no-such-job").status_code == 404
    assert httpx.get(f"{live.url}/no/such/route/{job_id}").status_code == 404
    lease = live.worker.claim(job_id)
    live.worker.finish(job_id, lease, "cancelled")
    events = httpx.get(f"{live.url}/jobs/{job_id}/events")  # a (short) event stream: left out
    assert events.headers["content-type"].startswith("text/event-stream")
    samples = scrape(live)
    key = "secateur_http_request_duration_seconds_count"
    assert samples[(key, (("method", "GET"), ("route", "/jobs/{job_id}"), ("status", "200")))] == 2
    assert samples[(key, (("method", "GET"), ("route", "/jobs/{job_id}"), ("status", "404")))] == 1
    assert samples[(key, (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert not [labels for name, labels in samples if job_id in str(labels)]  # ids never become labels
    assert not [labels for name, labels in samples if "/jobs/{job_id}/events" in str(labels)]
    assert samples[("process_cpu_seconds_total", ())] > 0
