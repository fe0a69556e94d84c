"""`/models` and `/datasets`: a tenant's stored inputs, uploaded once and named by id in any number of jobs.

`POST` streams the multipart part `file` into storage and sniffs it exactly as `POST /jobs` does
(service/api/uploads.py); the same bytes uploaded again answer 200 with the first upload's id (201 when
stored now). `DELETE` is refused with 409 `in_use` while an unfinished job names the input.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from service.api.deps import ContextDep, TenantDep
from service.api.uploads import receive_file_upload
from service.db.models import InputFile
from service.db.session import session_scope
from service.jobs import repository
from service.jobs.schemas import ErrorBody
from service.jobs.stored_inputs import StoredInputs
from service.limits import check_storage
from service.storage.keys import InputKind

__all__ = ["StoredInputOut", "StoredInputsDep", "datasets_router", "models_router"]

_FORMATS = {"model": "onnx or safetensors (the model as `POST /jobs` takes it)",
            "dataset": ".npz, an image-folder .zip/.tar/.tar.gz, or Parquet (as `POST /jobs` takes it)"}


class StoredInputOut(BaseModel):
    """A stored model or dataset: its id (for `POST /jobs` JSON bodies), content hash, size and format."""

    id: str
    sha256: str = Field(description="hex SHA-256 of the bytes; the same bytes always get the same id")
    bytes: int
    format: str = Field(examples=["safetensors"])
    created_at: datetime


class StoredInputList(BaseModel):
    """The caller's stored inputs of one kind, newest first."""

    items: list[StoredInputOut]


def get_stored_inputs(context: ContextDep) -> StoredInputs:
    """Returns the stored-inputs service over the app's job service (its database, store and settings)."""
    return StoredInputs(context.jobs)


StoredInputsDep = Annotated[StoredInputs, Depends(get_stored_inputs)]


def _out(row: InputFile) -> StoredInputOut:
    """The API view of a stored input row."""
    return StoredInputOut(id=row.id, sha256=row.sha256, bytes=row.bytes, format=row.format,
                          created_at=row.created_at)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Documents error responses (all in the `{"error": {...}}` shape) for OpenAPI."""
    return {status: {"model": ErrorBody} for status in statuses}


def _check_room(stored: StoredInputs, tenant: str) -> None:
    """Refuses (403) before any body byte is read when the tenant's storage quota is already used up."""
    with session_scope(stored.jobs.sessions) as session:
        used = repository.stored_input_bytes(session, tenant=tenant)
    check_storage(stored.jobs.settings, used, 0)


def _router(kind: InputKind) -> APIRouter:
    """Builds the five routes of one kind of stored input (`/models` or `/datasets`)."""
    router = APIRouter(prefix=f"/{kind}s", tags=[f"{kind}s"])
    body: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "additionalProperties": False,
        "properties": {"file": {"type": "string", "format": "binary", "description": _FORMATS[kind]}},
    }}}}}

    @router.post("", status_code=201, response_model=StoredInputOut, openapi_extra=body,
                 responses={200: {"model": StoredInputOut, "description": "these bytes were stored before"},
                            **_errors(400, 401, 403, 409, 413, 415, 422, 503)})
    async def upload(request: Request, response: Response, stored: StoredInputsDep,
                     tenant: TenantDep) -> StoredInputOut:
        """Stores a file for reuse by id; the same bytes again return the first upload (200, not 201)."""
        await run_in_threadpool(_check_room, stored, tenant)
        input_id, key = stored.new_key(tenant)
        received = await receive_file_upload(request, jobs=stored.jobs, kind=kind, key=key,
                                             cleanup=lambda: stored.discard(key))
        row, created = await run_in_threadpool(
            lambda: stored.register(tenant=tenant, kind=kind, input_id=input_id, upload=received))
        response.status_code = 201 if created else 200
        response.headers["Location"] = f"/{kind}s/{row.id}"
        return _out(row)

    @router.get("", response_model=StoredInputList, responses=_errors(401, 422, 503))
    def list_inputs(stored: StoredInputsDep, tenant: TenantDep,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> StoredInputList:
        """Lists the caller's stored inputs of this kind, newest first."""
        rows = stored.list(tenant=tenant, kind=kind, limit=limit)
        return StoredInputList(items=[_out(row) for row in rows])

    @router.get("/{input_id}", response_model=StoredInputOut, responses=_errors(401, 404, 503))
    def get_input(input_id: str, stored: StoredInputsDep, tenant: TenantDep) -> StoredInputOut:
        """Returns one stored input."""
        return _out(stored.get(tenant=tenant, kind=kind, input_id=input_id))

    @router.delete("/{input_id}", status_code=204, response_class=Response,
                   responses=_errors(401, 404, 409, 503))
    def delete_input(input_id: str, stored: StoredInputsDep, tenant: TenantDep) -> Response:
        """Deletes a stored input and its bytes (409 in_use while an unfinished job names it)."""
        stored.delete(tenant=tenant, kind=kind, input_id=input_id)
        return Response(status_code=204)

    return router


models_router = _router("model")
datasets_router = _router("dataset")
