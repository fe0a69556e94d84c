"""The /jobs routes: a few lines each, delegating to the job service (which owns the transactions)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.bounded_pages import fit_in_bytes
from service.api.deps import JobsDep, TenantDep, validation_shares
from service.api.download_links import DownloadLink, LinkTokenDep, create_link, open_link
from service.api.json_body import StoredInputsBody, is_json, read_json_body
from service.api.submit_guard import Admission, admit_submission
from service.api.uploads import receive_job_upload
from service.db.models import new_job_id, utcnow
from service.errors import ServiceError
from service.jobs.rerun import Reruns
from service.jobs.schemas import ErrorBody, JobOut, JobPage, JobStatus, job_out
from service.jobs.service import Download, encode_cursor
from service.jobs.stored_inputs import StoredInputs
from service.limits import poll_headers

__all__ = ["router"]

ArtifactName = Annotated[str, Path(description="model.onnx or model.onnx.zst", examples=["model.onnx"])]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Documents error responses (all in the `{"error": {...}}` shape) for OpenAPI."""
    return {status: {"model": ErrorBody} for status in statuses}


_CONFIG_EXAMPLE = ('{"method": "l1", "architecture": "resnet20", "target": {"pruning_ratio": 0.5}, '
                   '"finetune": {"epochs": 1}}')
# The body is parsed from the stream by hand (service/api/uploads.py), so its schema is declared here.
_UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["model", "dataset", "config"],
                    "additionalProperties": False,  # any other part is refused (unexpected_part)
                    "properties": {
                        "model": {"type": "string", "format": "binary",
                                  "description": "ONNX, or safetensors weights of `config.architecture`"},
                        "dataset": {"type": "string", "format": "binary",
                                    "description": ".npz (x_train, y_train, x_val, y_val) or an image-folder "
                                                   ".zip/.tar/.tar.gz (train/<class>/, val/<class>/)"},
                        "config": {"type": "string", "description": "the job config as a JSON string",
                                   "contentMediaType": "application/json",
                                   "contentSchema": {"$ref": "#/components/schemas/JobConfig"},
                                   "example": _CONFIG_EXAMPLE},
                    },
                },
                "encoding": {"config": {"contentType": "application/json"}},
                "example": {"model": "<cifar10_resnet20.safetensors>", "dataset": "<cifar10_subset.npz>",
                            "config": _CONFIG_EXAMPLE},
            },
            # Stored inputs by id (POST /models, POST /datasets): nothing is uploaded again.
            "application/json": {"schema": StoredInputsBody.model_json_schema()},
        },
    }
}

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=202, response_model=JobOut, openapi_extra=_UPLOAD_OPENAPI,
             responses=_errors(400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 503, 507))
async def create_job(
    request: Request,
    response: Response,
    jobs: JobsDep,
    tenant: TenantDep,
    admission: Annotated[Admission, Depends(admit_submission)],  # replay, rate, quotas: before the body
) -> JobOut:
    """Submits a job: streams the model and dataset to storage, checks them and the config, queues it.

    As JSON, `{"model_id", "dataset_id", "config"}` names stored inputs instead of uploading files.
    A retry with a used `Idempotency-Key` gets the first request's job at once (`Idempotent-Replayed:
    true`); its body is not read, so its quota, rate and upload are not spent again.
    """
    if admission.earlier is not None:
        job, created = admission.earlier, False
    elif is_json(request):
        body = await read_json_body(request, StoredInputsBody, config_bytes=jobs.settings.max_config_bytes)
        stored, key = StoredInputs(jobs), admission.idempotency_key
        async with validation_shares(request).hold(tenant, jobs.settings.sandbox_timeout_s):
            job, created = await run_in_threadpool(
                lambda: stored.submit_job(tenant=tenant, model_id=body.model_id, dataset_id=body.dataset_id,
                                          config_text=body.config_text(), idempotency_key=key))
    else:
        job_id = new_job_id()
        upload = await receive_job_upload(request, jobs=jobs, tenant=tenant, job_id=job_id)
        try:  # one of the tenant's fair share of upload checks, waited for on the event loop
            async with validation_shares(request).hold(tenant, jobs.settings.sandbox_timeout_s):
                job, created = await run_in_threadpool(
                    lambda: jobs.submit(tenant=tenant, job_id=job_id, config_text=upload.config_text,
                                        model=upload.model, dataset=upload.dataset,
                                        idempotency_key=admission.idempotency_key))
        except ServiceError:  # refused a share: the uploads go (submit removes them on its own failures)
            await run_in_threadpool(jobs.discard, tenant, job_id)
            raise
    response.headers["Location"] = f"/jobs/{job.id}"
    response.headers.update(poll_headers(job, jobs.settings))
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job_out(job, utcnow())


@router.get("", response_model=JobPage, responses=_errors(401, 422, 503))
def list_jobs(
    jobs: JobsDep,
    tenant: TenantDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobPage:
    """Lists the caller's jobs, newest first; follow `next_cursor` for older ones.

    A page holds at most `limit` jobs and at most `max_list_bytes` of JSON (then fewer, with a cursor).
    """
    page, next_cursor = jobs.page(tenant=tenant, status=status, limit=limit, cursor=cursor)
    now = utcnow()
    shown = [job_out(job, now) for job in page]
    kept = fit_in_bytes(shown, jobs.settings.max_list_bytes)
    if kept < len(shown):
        next_cursor = encode_cursor(page[kept - 1])
    return JobPage(jobs=shown[:kept], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut, responses=_errors(401, 404, 503))
def get_job(job_id: str, response: Response, jobs: JobsDep, tenant: TenantDep) -> JobOut:
    """Returns a job: status, stage, progress with ETA, metrics, error, timestamps and links.

    While the job is unfinished, `Retry-After` suggests how many seconds to wait before polling again.
    """
    job = jobs.get(tenant=tenant, job_id=job_id)
    response.headers.update(poll_headers(job, jobs.settings))
    return job_out(job, utcnow())


@router.get("/{job_id}/report",
            responses={200: {"content": {"application/json": {}}}, **_errors(401, 404, 409, 503)})
def get_report(job_id: str, jobs: JobsDep, tenant: TenantDep) -> Response:
    """Returns the report.json of a succeeded job (409 not_ready before that)."""
    return Response(jobs.report(tenant=tenant, job_id=job_id), media_type="application/json")


@router.get("/{job_id}/artifacts/{name}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}},
                       307: {"description": "redirect to a short-lived presigned URL (S3)"},
                       **_errors(401, 404, 409, 503)})
def get_artifact(job_id: str, name: ArtifactName, jobs: JobsDep, tenant: TenantDep) -> Response:
    """Downloads model.onnx or model.onnx.zst: streamed, or a 307 to a presigned URL on S3."""
    download = jobs.artifact(tenant=tenant, job_id=job_id, name=name)
    if download.url is not None:
        return RedirectResponse(download.url, status_code=307)
    return _attachment(download)


@router.post("/{job_id}/artifacts/{name}/link", status_code=201, response_model=DownloadLink,
             responses=_errors(401, 404, 409, 503))
def create_download_link(job_id: str, name: ArtifactName, jobs: JobsDep, tenant: TenantDep) -> DownloadLink:
    """Returns a short-lived URL that downloads the artifact through the API with no header (for browsers)."""
    return create_link(jobs, tenant=tenant, job_id=job_id, name=name)


@router.get("/{job_id}/artifacts/{name}/download", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}, **_errors(401, 404, 409, 503)})
def download_by_link(job_id: str, name: ArtifactName, jobs: JobsDep, token: LinkTokenDep) -> Response:
    """Streams the artifact to whoever holds a live link from POST .../link; the token is the credential."""
    return _attachment(open_link(jobs, token, job_id=job_id, name=name))


def _attachment(download: Download) -> StreamingResponse:
    """Streams a download as a file the browser saves under its name."""
    assert download.chunks is not None
    headers = {"Content-Length": str(download.size),
               "Content-Disposition": f'attachment; filename="{download.name}"'}
    return StreamingResponse(download.chunks, media_type="application/octet-stream", headers=headers)


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut,
             responses=_errors(401, 404, 409, 503))
def cancel_job(job_id: str, jobs: JobsDep, tenant: TenantDep) -> JobOut:
    """Cancels a job: a queued one at once, a running one at its next step boundary."""
    return job_out(jobs.cancel(tenant=tenant, job_id=job_id), utcnow())


@router.post("/{job_id}/rerun", status_code=202, response_model=JobOut,
             responses=_errors(401, 403, 404, 409, 422, 429, 503))
async def rerun_job(
    job_id: str,
    request: Request,
    response: Response,
    jobs: JobsDep,
    tenant: TenantDep,
    admission: Annotated[Admission, Depends(admit_submission)],
) -> JobOut:
    """Reruns a succeeded job on its inputs and fully resolved config; its report says whether the kept
    channels / masks and accuracies match the original (`rerun_of`, `reproduced`)."""
    if admission.earlier is not None:
        job, created = admission.earlier, False
    else:  # the rerun's inputs are checked as a submission's are: within the tenant's fair share
        reruns = Reruns(StoredInputs(jobs))
        async with validation_shares(request).hold(tenant, jobs.settings.sandbox_timeout_s):
            job, created = await run_in_threadpool(
                lambda: reruns.rerun(tenant=tenant, job_id=job_id, idempotency_key=admission.idempotency_key))
    response.headers["Location"] = f"/jobs/{job.id}"
    response.headers.update(poll_headers(job, jobs.settings))
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job_out(job, utcnow())


@router.delete("/{job_id}", status_code=204, response_class=Response, responses=_errors(401, 404, 409, 503))
def delete_job(job_id: str, jobs: JobsDep, tenant: TenantDep) -> Response:
    """Deletes a finished job and all its files (409 not_finished while it runs)."""
    jobs.delete(tenant=tenant, job_id=job_id)
    return Response(status_code=204)
