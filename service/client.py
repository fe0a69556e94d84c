"""A small typed client for Secateur's HTTP API: submit, watch, list, download, cancel, rerun and delete jobs;
store models and datasets once and name them by id.

It imports no server code (only httpx), so a user can copy it next to a notebook. Uploads and downloads
are streamed: a multi-GB dataset is never held in memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = [
    "ARTIFACT_NAMES",
    "PREFLIGHT_TIMEOUT_S",
    "TERMINAL_STATUSES",
    "ApiError",
    "Job",
    "JobPage",
    "Progress",
    "SecateurClient",
    "SseEvent",
    "StoredFile",
    "is_input_id",
    "iter_sse",
]

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
ARTIFACT_NAMES = ("model.onnx", "model.onnx.zst", "report.json")
_CHUNK = 1 << 20
PREFLIGHT_TIMEOUT_S = 180.0  # the server gives its pre-flight child 120 s, plus the upload
# Bounds on the server-suggested poll interval: never hammer the API, never look frozen to the user.
_MIN_POLL_S, _MAX_POLL_S = 0.2, 30.0


class ApiError(Exception):
    """An error answer from the API (or the transport), with the server's stable code and message."""

    def __init__(self, code: str, message: str, status: int) -> None:
        """Keeps the code, message and HTTP status (0 when no HTTP answer came back)."""
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Progress:
    """Where a running job is: fraction of the whole job, epoch of the current phase, and an ETA."""

    fraction: float | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    eta_s: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Progress:
        """Reads the `progress` object of a job answer, ignoring fields this client does not know."""
        data = data or {}
        return cls(**{k: data.get(k) for k in ("fraction", "epoch", "epochs", "step", "eta_s")})


@dataclass(frozen=True)
class Job:
    """One job as the API shows it; `raw` keeps the full answer for fields not modelled here."""

    id: str
    status: str
    stage: str | None
    progress: Progress
    metrics: dict[str, Any]
    error_code: str | None
    error_message: str | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        """Builds a Job from `GET /jobs/{id}`'s body."""
        error = data.get("error") or {}
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            stage=data.get("stage"),
            progress=Progress.from_json(data.get("progress")),
            metrics=dict(data.get("metrics") or {}),
            error_code=error.get("code"),
            error_message=error.get("message"),
            raw=data,
        )

    @property
    def terminal(self) -> bool:
        """True once the job can no longer change (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class StoredFile:
    """A stored model or dataset (`POST /models`, `POST /datasets`); `created` is False for a twin."""

    id: str
    sha256: str
    bytes: int
    format: str
    created_at: str
    created: bool = True

    @classmethod
    def from_json(cls, data: dict[str, Any], created: bool = True) -> StoredFile:
        """Builds a StoredFile from the API's answer."""
        return cls(id=str(data["id"]), sha256=str(data["sha256"]), bytes=int(data["bytes"]),
                   format=str(data["format"]), created_at=str(data["created_at"]), created=created)


def is_input_id(value: str | os.PathLike[str]) -> bool:
    """Tells a stored input's id (a canonical UUID that is not also a file here) from a file path."""
    text = os.fspath(value)
    try:
        canonical = str(uuid.UUID(text)) == text
    except ValueError:
        return False
    return canonical and not Path(text).exists()


@dataclass(frozen=True)
class JobPage:
    """One page of `GET /jobs`; pass `next_cursor` back to get the next one (None on the last page)."""

    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event: its type, data text, id (for Last-Event-ID) and the latest reconnection hint."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry_ms: int | None = None

    def json(self) -> Any:
        """Parses the data field as JSON."""
        return json.loads(self.data)


def iter_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Parses a text/event-stream line by line (WHATWG rules: comments skipped, multi-line data joined)."""
    event, last_id, retry = "message", None, None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event=event, data="\n".join(data), id=last_id, retry_ms=retry)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue  # a heartbeat comment
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value  # the id persists across events until the server sends another
        elif name == "retry" and value.isdigit():
            retry = int(value)  # the reconnection delay applies from now on, not to one event


def _raise_for_error(response: httpx.Response) -> None:
    """Turns a 4xx/5xx answer into ApiError, reading `{"error": {"code", "message"}}` when present."""
    if response.is_success:
        return
    if not response.is_stream_consumed:
        response.read()
    code, message = f"http_{response.status_code}", response.reason_phrase or "request failed"
    try:
        error = response.json().get("error")
        if isinstance(error, dict):
            code, message = str(error.get("code", code)), str(error.get("message", message))
    except (ValueError, AttributeError):
        pass  # not JSON (a proxy's HTML page): keep the HTTP status as the code
    raise ApiError(code, message, response.status_code)


def _poll_interval(response: httpx.Response, default: float) -> float:
    """The server's suggested wait before the next poll (`Retry-After` seconds), clamped to sane bounds."""
    try:
        suggested = float(response.headers.get("retry-after", default))
    except ValueError:
        suggested = default
    return min(max(suggested, _MIN_POLL_S), _MAX_POLL_S)


class SecateurClient:
    """Talks to one Secateur server; reuse one instance (it keeps a connection pool) and close it."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        poll_interval_s: float = 1.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """Opens a pooled HTTP client; `transport` lets tests talk to an in-process app."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # httpx drops Authorization when following a redirect to another origin (an S3 presigned URL).
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s,
            follow_redirects=True, transport=transport,
        )
        self.poll_interval_s = poll_interval_s

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def __enter__(self) -> SecateurClient:
        """Lets the client be used in a `with` block."""
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        """Closes the client at the end of a `with` block."""
        self.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Sends one request, mapping transport failures and error answers to ApiError."""
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError("unreachable", f"cannot reach {self._http.base_url}: {exc}", 0) from exc
        _raise_for_error(response)
        return response

    def submit(
        self,
        model_path: str | os.PathLike[str],
        dataset_path: str | os.PathLike[str],
        config: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> Job:
        """Submits a job; the model and the dataset are each a stored input's id or a file path.

        Two files go up with the job (multipart, streamed from disk). When either is an id, the other
        file is stored first (`POST /models` or `/datasets`) and the job names both by id (JSON).
        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if is_input_id(model_path) or is_input_id(dataset_path):
            body = {"model_id": self._input_id("model", model_path),
                    "dataset_id": self._input_id("dataset", dataset_path), "config": config}
            return Job.from_json(self._request("POST", "/jobs", json=body, headers=headers).json())
        model, dataset = Path(model_path), Path(dataset_path)
        # httpx reads file objects in chunks and sizes them with fstat: the files are never loaded whole.
        with model.open("rb") as model_file, dataset.open("rb") as dataset_file:
            files = {
                "model": (model.name, model_file, "application/octet-stream"),
                "dataset": (dataset.name, dataset_file, "application/octet-stream"),
            }
            response = self._request(
                "POST", "/jobs", files=files, data={"config": json.dumps(config)}, headers=headers,
            )
        return Job.from_json(response.json())

    def _input_id(self, kind: str, value: str | os.PathLike[str]) -> str:
        """Returns a stored input's id as given, or stores the file and returns its id."""
        return os.fspath(value) if is_input_id(value) else self.upload(kind, value).id

    def upload(self, kind: str, path: str | os.PathLike[str]) -> StoredFile:
        """Stores a model or dataset file for reuse by id (streamed); the same bytes return the first id."""
        if kind not in ("model", "dataset"):
            raise ValueError(f"unknown kind {kind!r}; choose model or dataset")
        file = Path(path)
        with file.open("rb") as stream:
            files = {"file": (file.name, stream, "application/octet-stream")}
            response = self._request("POST", f"/{kind}s", files=files)
        return StoredFile.from_json(response.json(), created=response.status_code == 201)

    def preflight(self, model: str | os.PathLike[str], config: dict[str, Any], *,
                  dataset: str | os.PathLike[str] | None = None,
                  targets: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Asks in seconds whether a job can run and what it would give (`POST /preflight`). The model and
        the optional dataset are each a stored input's id or a file path; when either is an id, a file given
        for the other is stored first and both go by id. A model no job could prune is an ApiError."""
        if is_input_id(model) or (dataset is not None and is_input_id(dataset)):
            body: dict[str, Any] = {"model_id": self._input_id("model", model), "config": config,
                                    "targets": targets or []}
            if dataset is not None:
                body["dataset_id"] = self._input_id("dataset", dataset)
            return dict(self._request("POST", "/preflight", json=body, timeout=PREFLIGHT_TIMEOUT_S).json())
        data = {"config": json.dumps(config), **({"targets": json.dumps(targets)} if targets else {})}
        with contextlib.ExitStack() as files_open:
            files = {kind: (Path(path).name, files_open.enter_context(Path(path).open("rb")),
                            "application/octet-stream")
                     for kind, path in (("model", model), ("dataset", dataset)) if path is not None}
            response = self._request("POST", "/preflight", files=files, data=data,
                                     timeout=PREFLIGHT_TIMEOUT_S)
        return dict(response.json())

    def stored(self, kind: str, limit: int = 100) -> list[StoredFile]:
        """Lists the caller's stored models or datasets, newest first."""
        items = self._request("GET", f"/{kind}s", params={"limit": limit}).json()["items"]
        return [StoredFile.from_json(item) for item in items]

    def delete_stored(self, kind: str, input_id: str) -> None:
        """Deletes a stored model or dataset (409 `in_use` while an unfinished job names it)."""
        self._request("DELETE", f"/{kind}s/{input_id}")

    def rerun(self, job_id: str, idempotency_key: str | None = None) -> Job:
        """Reruns a succeeded job on its inputs and resolved config; its report says what was reproduced."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Job.from_json(self._request("POST", f"/jobs/{job_id}/rerun", headers=headers).json())

    def get(self, job_id: str) -> Job:
        """Fetches one job."""
        return Job.from_json(self._request("GET", f"/jobs/{job_id}").json())

    def list(self, status: str | None = None, limit: int = 50, cursor: str | None = None) -> JobPage:
        """Fetches one page of the caller's jobs, newest first, optionally filtered by status."""
        params: dict[str, str | int] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        body = self._request("GET", "/jobs", params=params).json()
        return JobPage(jobs=[Job.from_json(j) for j in body["jobs"]], next_cursor=body.get("next_cursor"))

    def cancel(self, job_id: str) -> Job:
        """Asks the server to cancel a job; returns it (usually `cancelling`, or already terminal)."""
        return Job.from_json(self._request("POST", f"/jobs/{job_id}/cancel").json())

    def delete(self, job_id: str) -> None:
        """Deletes a finished job and all its files (409 `not_finished` while it runs)."""
        self._request("DELETE", f"/jobs/{job_id}")

    def report(self, job_id: str) -> dict[str, Any]:
        """Fetches the finished job's report (see DESIGN.md's report.json)."""
        body: dict[str, Any] = self._request("GET", f"/jobs/{job_id}/report").json()
        return body

    def download(self, job_id: str, name: str, dest: str | os.PathLike[str]) -> Path:
        """Streams artifact `name` to `dest` (a file, or a folder to put `name` in); returns the path.

        The bytes go to a temporary file beside `dest` that is renamed at the end, so an interrupted
        download never leaves a truncated model under the final name.
        """
        if name not in ARTIFACT_NAMES:
            raise ValueError(f"unknown artifact {name!r}; choose one of {', '.join(ARTIFACT_NAMES)}")
        target = Path(dest)
        if target.is_dir():
            target = target / name
        try:
            # The report has its own route; the binary artifacts live under /artifacts/.
            path = f"/jobs/{job_id}/report" if name == "report.json" else f"/jobs/{job_id}/artifacts/{name}"
            with self._http.stream("GET", path) as response:
                _raise_for_error(response)
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
                try:
                    with os.fdopen(fd, "wb") as out:
                        for chunk in response.iter_bytes(_CHUNK):
                            out.write(chunk)
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
        except httpx.TransportError as exc:
            raise ApiError("unreachable", f"download of {name} interrupted: {exc}", 0) from exc
        return target

    # --- sweeps (`/sweeps`): one job per target on stored inputs; the bodies are the API's JSON as is ---

    def create_sweep(self, model_id: str, dataset_id: str, config: dict[str, Any],
                     targets: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """Starts a sweep on a stored model and dataset; returns `{id, jobs}`."""
        body = {"model_id": model_id, "dataset_id": dataset_id, "config": config, "targets": [*targets]}
        created: dict[str, Any] = self._request("POST", "/sweeps", json=body).json()
        return created

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        """Fetches a sweep: its status, points and Pareto front."""
        sweep: dict[str, Any] = self._request("GET", f"/sweeps/{sweep_id}").json()
        return sweep

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        """Cancels every unfinished point of a sweep; returns the sweep."""
        sweep: dict[str, Any] = self._request("POST", f"/sweeps/{sweep_id}/cancel").json()
        return sweep

    def sweeps(self, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        """Fetches one page of the caller's sweeps, newest first (`{sweeps, next_cursor}`)."""
        params: dict[str, str | int] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page: dict[str, Any] = self._request("GET", "/sweeps", params=params).json()
        return page

    def delete_sweep(self, sweep_id: str) -> None:
        """Deletes a finished sweep and its jobs (409 `not_finished` while a point runs)."""
        self._request("DELETE", f"/sweeps/{sweep_id}")

    def wait_sweep(self, sweep_id: str, on_update: Callable[[dict[str, Any]], None] | None = None,
                   timeout_s: float | None = None) -> dict[str, Any]:
        """Polls the sweep until every point has ended; returns it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            sweep = self.get_sweep(sweep_id)
            if on_update is not None:
                on_update(sweep)
            if sweep["status"] != "running":
                return sweep
            _check_deadline(f"of sweep {sweep_id}", deadline)
            time.sleep(max(self.poll_interval_s, 2.0))

    def events(self, job_id: str, last_event_id: str | None = None) -> Generator[SseEvent, None, None]:
        """Follows `GET /jobs/{id}/events` once; yields events until the server closes the stream."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        # No read timeout: the server sends a heartbeat comment every ~15 s, a dead peer shows as an error.
        timeout = httpx.Timeout(self._http.timeout.connect, read=60.0)
        with self._http.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
            _raise_for_error(response)
            yield from iter_sse(response.iter_lines())

    def wait(
        self,
        job_id: str,
        on_update: Callable[[Job], None] | None = None,
        *,
        follow_events: bool = True,
        timeout_s: float | None = None,
    ) -> Job:
        """Blocks until the job is terminal, calling `on_update` with each new state; returns the final job.

        Follows the event stream (reconnecting with Last-Event-ID when it drops) and falls back to polling
        at the server's suggested interval when the stream is unavailable (e.g. a proxy that buffers).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if follow_events:
            try:
                return self._wait_events(job_id, on_update, deadline)
            except ApiError as exc:
                if exc.status not in (404, 405, 406, 501):
                    raise
        return self._wait_polling(job_id, on_update, deadline)

    def follow(self, job_id: str, deadline: float | None = None) -> Iterator[SseEvent]:
        """Yields the job's events up to its terminal one, reconnecting with Last-Event-ID when it drops."""
        last_id: str | None = None
        retry_s = self.poll_interval_s
        while True:
            try:
                with contextlib.closing(self.events(job_id, last_id)) as stream:
                    for event in stream:
                        last_id = event.id or last_id
                        retry_s = event.retry_ms / 1000 if event.retry_ms is not None else retry_s
                        yield event
                        if Job.from_json(event.json()).terminal:
                            return
                        _check_deadline(job_id, deadline)
            except httpx.TransportError:
                pass  # the connection dropped: reconnect below, resuming after `last_id`
            _check_deadline(job_id, deadline)
            time.sleep(min(max(retry_s, _MIN_POLL_S), _MAX_POLL_S))

    def _wait_events(
        self, job_id: str, on_update: Callable[[Job], None] | None, deadline: float | None,
    ) -> Job:
        """Waits by following server-sent events to the job's terminal state."""
        job: Job | None = None
        for event in self.follow(job_id, deadline):
            job = Job.from_json(event.json())
            if on_update is not None:
                on_update(job)
        assert job is not None  # `follow` returns only after a terminal event
        return job

    def _wait_polling(
        self, job_id: str, on_update: Callable[[Job], None] | None, deadline: float | None,
    ) -> Job:
        """Waits by polling `GET /jobs/{id}`, reporting only states that differ from the last one."""
        last: dict[str, Any] | None = None
        while True:
            response = self._request("GET", f"/jobs/{job_id}")
            job = Job.from_json(response.json())
            if job.raw != last and on_update is not None:
                on_update(job)
            last = job.raw
            if job.terminal:
                return job
            _check_deadline(job_id, deadline)
            time.sleep(_poll_interval(response, self.poll_interval_s))


def _check_deadline(job_id: str, deadline: float | None) -> None:
    """Raises a `wait_timeout` ApiError once the caller's deadline has passed."""
    if deadline is not None and time.monotonic() > deadline:
        raise ApiError("wait_timeout", f"job {job_id} did not finish in time; it is still running", 0)
