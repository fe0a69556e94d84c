"""`GET /jobs/{id}/events`: ordered server-sent events, Last-Event-ID resumption, heartbeats, the end."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api import routes_events
from service.auth.service import KeyService
from service.client import SseEvent, iter_sse
from tests.service.live import Live, sample_report, serve

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server for the module; streams poll every 20 ms and send heartbeats every 0.3 s."""
    saved = routes_events.POLL_S, routes_events.HEARTBEAT_S
    routes_events.POLL_S, routes_events.HEARTBEAT_S = 0.02, 0.3
    try:
        with serve(tmp_path_factory.mktemp("server")) as server:
            yield server
    finally:
        routes_events.POLL_S, routes_events.HEARTBEAT_S = saved


def collect(
    live: Live, job_id: str, headers: dict[str, str] | None = None, limit: int = 100,
    events: list[SseEvent] | None = None,
) -> list[SseEvent]:
    """Reads the job's event stream until the server closes it (or `limit` events), appending each event
    to `events` (a new list by default) as it arrives."""
    events = [] if events is None else events
    with httpx.Client(base_url=live.url, timeout=10) as http, \
            http.stream("GET", f"/jobs/{job_id}/events", headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in iter_sse(response.iter_lines()):
            events.append(event)
            if len(events) >= limit:
                break
    return events


def _seen(events: list[SseEvent], count: int) -> None:
    """Waits until the reader has received `count` events (each state its own event, even under load)."""
    deadline = time.monotonic() + 20
    while len(events) < count:
        assert time.monotonic() < deadline, f"only {len(events)} events arrived, not {count}"
        time.sleep(0.01)


def test_events_follow_the_job_in_order_and_close_after_the_end(live: Live) -> None:
    job_id = live.worker.insert()
    events: list[SseEvent] = []
    reader = threading.Thread(target=lambda: collect(live, job_id, events=events), daemon=True)
    reader.start()
    w = live.worker  # each write waits for the previous state's event, so none is merged into the next
    _seen(events, 1)
    lease = w.claim(job_id)
    _seen(events, 2)
    w.progress(job_id, lease, "evaluating", fraction=0.05)
    _seen(events, 3)
    for epoch in (1, 2):
        w.progress(job_id, lease, "finetuning", fraction=0.4 * epoch, epoch=epoch, epochs=2,
                   metrics={"loss": 1.0 / epoch})
        _seen(events, 3 + epoch)
    w.succeed(job_id, lease, sample_report(), {"model.onnx": b"x", "model.onnx.zst": b"y"})
    reader.join(10)
    assert not reader.is_alive(), "the stream did not close after the terminal event"
    jobs: list[dict[str, Any]] = [event.json() for event in events]
    assert [e.event for e in events] == ["status", "status", "stage", "stage", "progress", "end"]
    assert [j["status"] for j in jobs] == ["queued", "running", "running", "running", "running", "succeeded"]
    assert [j["stage"] for j in jobs][2:5] == ["evaluating", "finetuning", "finetuning"]
    assert [j["progress"].get("metrics") for j in jobs][3:5] == [{"loss": 1.0}, {"loss": 0.5}]
    assert jobs[-1]["links"]["model"] == f"/jobs/{job_id}/artifacts/model.onnx"
    ids = [int(e.id or 0) for e in events]
    assert ids == sorted(set(ids))  # distinct and increasing
    assert events[0].retry_ms == routes_events.RETRY_MS


def test_last_event_id_resumes_after_what_the_client_saw(live: Live) -> None:
    job_id = live.worker.insert()
    lease = live.worker.claim(job_id)
    live.worker.progress(job_id, lease, "finetuning", fraction=0.3, epoch=1, epochs=3)
    seen = collect(live, job_id, limit=1)[0]
    assert seen.json()["progress"]["epoch"] == 1

    def advance() -> None:
        """Moves the job on after the reconnected stream has had time to (not) resend the old state."""
        time.sleep(0.2)
        live.worker.progress(job_id, lease, "finetuning", fraction=0.6, epoch=2, epochs=3)

    threading.Thread(target=advance, daemon=True).start()
    started = time.monotonic()
    resumed = collect(live, job_id, headers={"Last-Event-ID": seen.id or ""}, limit=1)[0]
    assert resumed.json()["progress"]["epoch"] == 2  # epoch 1 is not sent again
    assert time.monotonic() - started >= 0.15
    assert resumed.event == "status"  # the first event of a connection
    assert int(resumed.id or 0) > int(seen.id or 0)

    live.worker.finish(job_id, lease, "failed", error_code="export_mismatch", error_message="differs")
    end = collect(live, job_id, headers={"Last-Event-ID": resumed.id or ""})
    assert [e.event for e in end] == ["end"]
    assert end[0].json()["error"] == {"code": "export_mismatch", "message": "differs"}
    # A client that already saw the end is told there is nothing more (EventSource stops on 204).
    response = httpx.get(f"{live.url}/jobs/{job_id}/events", headers={"Last-Event-ID": end[0].id or ""})
    assert response.status_code == 204


def test_an_idle_stream_sends_heartbeat_comments(live: Live) -> None:
    job_id = live.worker.insert()
    lines: list[str] = []
    with httpx.Client(base_url=live.url, timeout=10) as http, \
            http.stream("GET", f"/jobs/{job_id}/events") as response:
        assert response.headers["cache-control"] == "no-cache"
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith(":"):
                break
    assert lines[0] == f"retry: {routes_events.RETRY_MS}"
    assert lines[-1] == ": keepalive"
    assert any(line.startswith("event: status") for line in lines)


def test_missing_or_foreign_jobs_are_a_json_404_before_any_stream(live: Live) -> None:
    foreign = live.worker.insert(tenant="someone-else")
    for job_id in ("no-such-job", foreign):
        response = httpx.get(f"{live.url}/jobs/{job_id}/events")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert json.loads(response.text)["error"]["code"] == "not_found"


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[Live, dict[str, str]]]:
    """A server in keys mode with small stream caps (2 per tenant, 3 in all), a fast key re-check and a
    1 s stream lifetime; with keys of tenants acme and globex (their Authorization headers)."""
    saved = routes_events.POLL_S
    routes_events.POLL_S = 0.02
    try:
        with serve(tmp_path, auth="keys", max_streams_per_tenant=2, max_streams=3, stream_auth_recheck_s=0.2,
                   stream_max_s=1.0) as server:
            keys = KeyService(server.app.state.context.jobs.sessions)
            tokens = {tenant: f"Bearer {keys.create(tenant=tenant)[1]}" for tenant in ("acme", "globex")}
            yield server, tokens
    finally:
        routes_events.POLL_S = saved


def _open(stack: ExitStack, http: httpx.Client, job_id: str, token: str) -> httpx.Response:
    """Opens an event stream and keeps it open until the stack closes."""
    return stack.enter_context(http.stream("GET", f"/jobs/{job_id}/events", headers={"Authorization": token}))


def _open_streams(live: Live) -> int:
    """How many streams the server holds shares for."""
    shares = getattr(live.app.state, "stream_shares", None)
    return 0 if shares is None else shares.used


def test_streams_are_capped_per_tenant_and_in_all(keyed: tuple[Live, dict[str, str]]) -> None:
    live, tokens = keyed
    acme, globex = live.worker.insert(tenant="acme"), live.worker.insert(tenant="globex")
    with httpx.Client(base_url=live.url, timeout=10) as http, ExitStack() as stack:
        assert [_open(stack, http, acme, tokens["acme"]).status_code for _ in range(2)] == [200, 200]
        over = http.get(f"/jobs/{acme}/events", headers={"Authorization": tokens["acme"]})
        assert (over.status_code, over.json()["error"]["code"]) == (429, "too_many_streams")
        assert "you have" in over.json()["error"]["message"]
        assert over.headers["retry-after"] == "5"
        assert _open(stack, http, globex, tokens["globex"]).status_code == 200  # its own share
        full = http.get(f"/jobs/{globex}/events", headers={"Authorization": tokens["globex"]})
        assert (full.status_code, full.json()["error"]["code"]) == (429, "too_many_streams")
        assert "the server has" in full.json()["error"]["message"]
    deadline = time.monotonic() + 5
    while _open_streams(live) and time.monotonic() < deadline:  # closed streams give their shares back
        time.sleep(0.02)
    assert _open_streams(live) == 0


def test_a_revoked_keys_stream_is_closed_within_the_recheck(keyed: tuple[Live, dict[str, str]]) -> None:
    live, _ = keyed
    keys = KeyService(live.app.state.context.jobs.sessions)
    row, token = keys.create(tenant="acme", name="to-revoke")
    job_id = live.worker.insert(tenant="acme")
    events: list[SseEvent] = []
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=live.url, timeout=10) as http, \
            http.stream("GET", f"/jobs/{job_id}/events", headers=headers) as stream:
        for event in iter_sse(stream.iter_lines()):
            events.append(event)
            if event.event == "status":
                keys.revoke(row.id)
                revoked_at = time.monotonic()
        ended_after = time.monotonic() - revoked_at
        again = http.get(f"/jobs/{job_id}/events", headers=headers)  # what a reconnecting client meets
    assert [e.event for e in events] == ["status"]
    assert ended_after < 0.2 + 0.5  # the re-check interval, plus a poll and some scheduling
    assert (again.status_code, again.json()["error"]["code"]) == (401, "unauthorized")


def test_a_stream_ends_at_its_lifetime_and_resumes_with_last_event_id(
    keyed: tuple[Live, dict[str, str]],
) -> None:
    live, tokens = keyed
    job_id = live.worker.insert(tenant="acme")
    started = time.monotonic()
    with httpx.Client(base_url=live.url, timeout=10) as http:
        with http.stream("GET", f"/jobs/{job_id}/events", headers={"Authorization": tokens["acme"]}) as first:
            seen = list(iter_sse(first.iter_lines()))
        lived = time.monotonic() - started
        assert [e.event for e in seen] == ["status"]  # no `end`: the job is still queued
        assert 1.0 <= lived < 3.0
        lease = live.worker.claim(job_id)
        live.worker.finish(job_id, lease, "cancelled")
        headers = {"Authorization": tokens["acme"], "Last-Event-ID": seen[-1].id or ""}
        with http.stream("GET", f"/jobs/{job_id}/events", headers=headers) as resumed:
            after = list(iter_sse(resumed.iter_lines()))
    assert [e.event for e in after] == ["end"]  # the queued state was not sent again
