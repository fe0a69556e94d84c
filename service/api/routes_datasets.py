"""`POST /datasets/validate`: what a dataset holds and what looks wrong with it, without a job.

The multipart `file` part streams into a private temp file under the upload size limit (its head sniffed
first, so a pickle is refused after one chunk); the engine's `secateur dataset check` then reads it in the
submit-time sandbox (service/jobs/sandbox.py): headers only, no torch, no writes, resource limits.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool

from service.api.deps import AppContext, ContextDep, TenantDep, validation_shares
from service.api.json_body import StoredDatasetBody, is_json, read_json_body
from service.api.uploads import _Events, _feed, bounded_body, new_parser
from service.bounds import bounded_strings
from service.errors import BadRequest, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from service.jobs.inputs import HEAD_BYTES
from service.jobs.sandbox import check_dataset_file
from service.jobs.schemas import ErrorBody
from service.jobs.stored_inputs import StoredInputs
from workers.compression.sniff import sniff_dataset

__all__ = ["DatasetFacts", "router"]

router = APIRouter(prefix="/datasets", tags=["datasets"])

_UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"], "additionalProperties": False,
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": ".npz, an image-folder .zip/.tar/.tar.gz, or Parquet"}},
        }},
                    "application/json": {"schema": StoredDatasetBody.model_json_schema()}},
    }
}


class DatasetFacts(BaseModel):
    """A dataset's facts from its headers (no pixel decoded) and what looks wrong with it."""

    format: str = Field(examples=["zip"],
                        description="npz, zip, tar, tar.gz, parquet, parquet.zip or parquet.tar")
    num_classes: int
    classes: list[str]
    splits: dict[str, int] = Field(description="images per split: {train, val} (val split off when absent)")
    counts: dict[str, dict[str, int]] = Field(description="images per class and split")
    image_sizes: dict[str, int] = Field(description="images per WxH size (the 20 commonest, then other)")
    unreadable: list[str] = Field(description="images that cannot be decoded (skipped; the first 100)")
    warnings: list[str] = Field(description="class imbalance, a tiny validation split, train/val duplicates")


@router.post("/validate", response_model=DatasetFacts, openapi_extra=_UPLOAD_OPENAPI,
             responses={status: {"model": ErrorBody}
                        for status in (400, 401, 404, 408, 413, 415, 422, 429, 503, 507)})
async def validate_dataset(request: Request, context: ContextDep, tenant: TenantDep) -> DatasetFacts:
    """Checks an uploaded dataset in seconds: format, classes, counts per class and split, image sizes,
    unreadable files and warnings. Nothing is stored. Names (classes, files) longer than 200 characters are
    cut, so a hostile archive cannot make the answer huge."""
    settings = context.settings
    with tempfile.TemporaryDirectory(prefix="secateur-validate-") as tmp:  # mode 0700, removed after
        path = Path(tmp) / "dataset"
        if is_json(request):  # a stored dataset by id (POST /datasets): copied here, not uploaded again
            await _copy_stored(request, context, tenant, path)
        else:
            await _receive_file(request, path, settings.max_upload_bytes)
        async with validation_shares(request).hold(tenant, settings.sandbox_timeout_s):
            facts = await run_in_threadpool(check_dataset_file, path, settings)
    return DatasetFacts(**bounded_strings(facts))


async def _copy_stored(request: Request, context: AppContext, tenant: str, path: Path) -> None:
    """Copies the stored dataset a JSON body `{"dataset_id"}` names into `path` (404 when there is none)."""
    body = await read_json_body(request, StoredDatasetBody, config_bytes=0)
    stored = StoredInputs(context.jobs)
    await run_in_threadpool(lambda: stored.download(tenant=tenant, kind="dataset", input_id=body.dataset_id,
                                                    path=path))


async def _receive_file(request: Request, path: Path, limit: int) -> None:
    """Streams the body's one `file` part into `path`, counting bytes; refuses anything else."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary", b"")
    if content_type != b"multipart/form-data" or not boundary:
        raise UnsupportedMediaType("send multipart/form-data with one part named file")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is {declared} bytes; the limit is {limit}")
    events = _Events()
    parser = new_parser(boundary, events)
    head, seen, done = bytearray(), False, False
    with path.open("wb") as out:
        async for chunk in bounded_body(request, limit):
            _feed(parser, chunk)
            items, events.items = events.items, []
            for kind, data in items:
                if kind == "part":
                    seen = _open_part(data, seen)
                elif kind == "data":
                    if len(head) < HEAD_BYTES:
                        head += data[:HEAD_BYTES - len(head)]
                        if len(head) == HEAD_BYTES:
                            sniff_dataset(bytes(head))  # a pickle or unknown format: refused at once
                    await _write(out, data)
                elif kind == "done":
                    done = True
        parser.finalize()
    if not done:
        raise BadRequest("the multipart body ended before its closing boundary")
    if not seen:
        raise InvalidRequest("missing part: file; send the dataset as the multipart part `file`",
                             code="missing_part")
    sniff_dataset(bytes(head))


def _open_part(disposition: bytes, seen: bool) -> bool:
    """Accepts the single part named `file`; returns True (it has now been seen)."""
    _, options = parse_options_header(disposition)
    name = options.get(b"name", b"").decode("utf-8", "replace")
    if name != "file":
        raise InvalidRequest(f"unexpected part {name!r}; send the dataset as the part `file`",
                             code="unexpected_part")
    if seen:
        raise InvalidRequest("part 'file' was sent twice", code="duplicate_part")
    return True


async def _write(out: BinaryIO, data: bytes) -> None:
    """Appends a chunk to the temp file off the event loop."""
    await anyio.to_thread.run_sync(out.write, data)
