"""Streams a multipart upload (`POST /jobs`, `POST /models`, `POST /datasets`) into the object store as it
arrives, never whole in memory.

The body is parsed incrementally (python-multipart over `request.stream()`): bytes are counted as they
come, so the size limit bites when it is crossed whatever Content-Length claimed; each file's first 64 KiB
are sniffed before the rest is stored, so a pickle is refused after one chunk, not after a gigabyte.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.errors import BadRequest, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from service.jobs.inputs import HEAD_BYTES, parse_config, sniff_head
from service.jobs.service import JobService, StoredInput
from service.storage.base import ObjectWriter
from service.storage.keys import InputKind
from workers.compression.errors import InvalidConfig

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["ReceivedUpload", "bounded_body", "receive_file_upload", "receive_job_upload"]

FILE_PARTS: tuple[InputKind, ...] = ("model", "dataset")
_FLUSH = 1024 * 1024  # bytes gathered before one store write (a worker thread call)


async def bounded_body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """Yields the request body as it streams in, refusing it (413) once it passes `limit` bytes."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
        yield chunk


@dataclass(frozen=True)
class ReceivedUpload:
    """A fully received job submission: the config text and both stored, sniffed files."""

    config_text: str
    model: StoredInput
    dataset: StoredInput


@dataclass
class _FilePart:
    """A file part being stored: its writer, first bytes (for sniffing) and bytes not yet written."""

    name: str
    kind: InputKind
    key: str
    writer: ObjectWriter
    head: bytearray = field(default_factory=bytearray)
    pending: bytearray = field(default_factory=bytearray)
    format: str | None = None


@dataclass
class _Events:
    """What the parser's synchronous callbacks saw in one chunk, replayed afterwards with awaits."""

    items: list[tuple[str, bytes]] = field(default_factory=list)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    disposition: bytes = b""

    def callbacks(self) -> MultipartCallbacks:
        """Returns python-multipart callbacks that record parts, headers and data (copied from the chunk)."""

        def on_header_end() -> None:
            if bytes(self.header_field).lower() == b"content-disposition":
                self.disposition = bytes(self.header_value)
            self.header_field.clear()
            self.header_value.clear()

        def on_headers_finished() -> None:
            self.items.append(("part", self.disposition))
            self.disposition = b""

        return {
            "on_header_field": lambda data, start, end: self.header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self.header_value.extend(data[start:end]),
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": lambda data, start, end: self.items.append(("data", bytes(data[start:end]))),
            "on_part_end": lambda: self.items.append(("end", b"")),
            "on_end": lambda: self.items.append(("done", b"")),
        }


class _Receiver:
    """Consumes one request body: routes each file part to its store writer, a `config` part to a buffer.

    `targets` maps each expected file part's name to what it holds and the key it is stored under;
    `cleanup` removes whatever was stored when the request fails.
    """

    def __init__(self, jobs: JobService, targets: dict[str, tuple[InputKind, str]], *, config: bool,
                 cleanup: Callable[[], None]) -> None:
        self.jobs, self.targets, self.cleanup = jobs, targets, cleanup
        self.parts = (*targets, "config") if config else tuple(targets)
        self.limit = jobs.settings.max_upload_bytes
        self.seen: set[str] = set()
        self.files: dict[str, StoredInput] = {}
        self.config: str | None = None
        self.current: _FilePart | bytearray | None = None
        self.done = False

    @property
    def expected(self) -> str:
        """The expected part names, for messages ("model, dataset and config")."""
        *rest, last = self.parts
        return f"{', '.join(rest)} and {last}" if rest else last

    async def run(self, request: Request) -> None:
        """Parses and stores the whole body; on any failure removes everything stored, then re-raises."""
        try:
            await self._receive(request)
        except BaseException:
            with anyio.CancelScope(shield=True):  # clean up even when the request is being cancelled
                if isinstance(self.current, _FilePart):
                    await anyio.to_thread.run_sync(self.current.writer.abort)
                await anyio.to_thread.run_sync(self.cleanup)
            raise

    async def _receive(self, request: Request) -> None:
        """Feeds the body to the parser chunk by chunk, counting bytes, then checks every part arrived."""
        boundary = _boundary(request, self.expected)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            raise PayloadTooLarge(f"the request body is {declared} bytes; the limit is {self.limit}")
        events = _Events()
        parser = new_parser(boundary, events)
        async for chunk in bounded_body(request, self.limit):
            _feed(parser, chunk)
            await self._replay(events)
        parser.finalize()
        await self._replay(events)
        if not self.done:
            raise BadRequest("the multipart body ended before its closing boundary")
        missing = [name for name in self.parts if name not in self.seen]
        if missing:
            raise InvalidRequest(f"missing part(s): {', '.join(missing)}; send {self.expected}",
                                 code="missing_part")

    async def _replay(self, events: _Events) -> None:
        """Acts on the recorded parser events in order (opening parts, writing data, closing parts)."""
        items, events.items = events.items, []
        for kind, data in items:
            if kind == "part":
                await self._open(data)
            elif kind == "data":
                await self._data(data)
            elif kind == "end":
                await self._close()
            else:
                self.done = True

    async def _open(self, disposition: bytes) -> None:
        """Starts a part named by its Content-Disposition; refuses unknown or repeated names."""
        kind, options = parse_options_header(disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if kind != b"form-data" or not name:
            raise BadRequest("every part needs `Content-Disposition: form-data; name=...`")
        if name not in self.parts:
            raise InvalidRequest(f"unexpected part {name!r}; send {self.expected}", code="unexpected_part")
        if name in self.seen:
            raise InvalidRequest(f"part {name!r} was sent twice", code="duplicate_part")
        self.seen.add(name)
        if name == "config":
            self.current = bytearray()
            return
        file_kind, key = self.targets[name]
        writer = await anyio.to_thread.run_sync(self.jobs.store.open_writer, key)
        self.current = _FilePart(name=name, kind=file_kind, key=key, writer=writer)

    async def _data(self, data: bytes) -> None:
        """Adds bytes to the current part: sniffs a file's head once complete, writes in ~1 MiB batches."""
        part = self.current
        if isinstance(part, bytearray):
            part += data
            limit = self.jobs.settings.max_config_bytes
            if len(part) > limit:
                raise PayloadTooLarge(f"the config part is larger than {limit} bytes")
            return
        assert part is not None
        if len(part.head) < HEAD_BYTES:
            part.head += data[:HEAD_BYTES - len(part.head)]
            if len(part.head) == HEAD_BYTES:
                part.format = sniff_head(part.kind, bytes(part.head))
        part.pending += data
        if len(part.pending) >= _FLUSH:
            await anyio.to_thread.run_sync(part.writer.write, bytes(part.pending))
            part.pending.clear()

    async def _close(self) -> None:
        """Finishes the current part: checks the config early, or sniffs (if short) and commits a file."""
        part = self.current
        if isinstance(part, bytearray):
            self.current = None
            try:
                self.config = part.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidConfig("config is not UTF-8 text") from None
            parse_config(self.config)  # refuse a bad config now; the service checks it again in full
            return
        assert part is not None  # stays `current` until committed: `run` aborts it if anything here fails
        fmt = part.format or sniff_head(part.kind, bytes(part.head))
        if part.pending:
            await anyio.to_thread.run_sync(part.writer.write, bytes(part.pending))
        size, sha256 = await anyio.to_thread.run_sync(part.writer.commit)
        self.current = None
        self.files[part.name] = StoredInput(key=part.key, size=size, sha256=sha256, head=bytes(part.head),
                                            format=fmt)


def _boundary(request: Request, expected: str) -> bytes:
    """Returns the multipart boundary of the request; 415 when the body is not multipart/form-data."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary", b"")
    if content_type != b"multipart/form-data" or not boundary:
        raise UnsupportedMediaType(f"send multipart/form-data with the part(s) {expected}")
    return boundary


def new_parser(boundary: bytes, events: _Events) -> MultipartParser:
    """Returns a parser recording into `events`; a boundary it refuses (over 256 bytes) is a 400."""
    try:
        return MultipartParser(boundary, events.callbacks())
    except FormParserError as exc:
        raise BadRequest(f"malformed multipart header: {exc}") from None


def _feed(parser: MultipartParser, chunk: bytes) -> None:
    """Feeds one chunk to the parser; malformed multipart becomes a 400."""
    try:
        parser.write(chunk)
    except FormParserError as exc:  # MultipartParseError and its relatives
        raise BadRequest(f"malformed multipart body: {exc}") from None


async def receive_job_upload(
    request: Request, *, jobs: JobService, tenant: str, job_id: str
) -> ReceivedUpload:
    """Receives a `POST /jobs` body into storage under the new job's keys; nothing is left on failure."""
    targets: dict[str, tuple[InputKind, str]] = {
        kind: (kind, jobs.input_key(tenant, job_id, kind)) for kind in FILE_PARTS}
    receiver = _Receiver(jobs, targets, config=True, cleanup=lambda: jobs.discard(tenant, job_id))
    await receiver.run(request)
    assert receiver.config is not None  # `run` checked that every part arrived
    files = receiver.files
    return ReceivedUpload(config_text=receiver.config, model=files["model"], dataset=files["dataset"])


async def receive_file_upload(
    request: Request, *, jobs: JobService, kind: InputKind, key: str, cleanup: Callable[[], None]
) -> StoredInput:
    """Receives a body whose one part `file` is a model or dataset into `key`, sniffed as job uploads are."""
    receiver = _Receiver(jobs, {"file": (kind, key)}, config=False, cleanup=cleanup)
    await receiver.run(request)
    return receiver.files["file"]
