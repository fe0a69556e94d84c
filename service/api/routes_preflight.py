"""`POST /preflight`: can a job on this model run, and what would it give? Answered in seconds, not queued.

Multipart (`model` file, optional `dataset` file, `config` and optional `targets` JSON parts) streams into
a private temp folder under the upload size limit; JSON (`{"model_id", "dataset_id"?, "config",
"targets"?}`) names stored inputs. The engine's `secateur preflight` then runs on the files in the upload
sandbox (service/jobs/preflight_sandbox.py). A model no job could prune is the job's own typed 4xx.
With `SECATEUR_PREFLIGHT_URL` set (an API image without torch), the request is forwarded to the service
there instead, and its answer returned as it is (service/api/preflight_forward.py).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from service.api.deps import AppContext, ContextDep, TenantDep, validation_shares
from service.api.preflight_forward import FORWARDED, forward_preflight
from service.api.uploads import _Events, _feed, bounded_body
from service.errors import BadRequest, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from service.jobs.inputs import parse_config
from service.jobs.preflight_sandbox import run_preflight_child
from service.jobs.schemas import ErrorBody
from service.jobs.stored_inputs import StoredInputs, as_job_input
from service.storage.keys import InputKind
from workers.compression.config import Target

__all__ = ["PreflightIn", "PreflightOut", "router"]

router = APIRouter(tags=["preflight"])
_FILES = ("model", "dataset")
_TEXTS = ("config", "targets")
_MAX_TARGETS = 32

_UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["model", "config"], "additionalProperties": False,
            "properties": {
                "model": {"type": "string", "format": "binary", "description": "ONNX or safetensors weights"},
                "dataset": {"type": "string", "format": "binary", "description": "optional: checks the fit"},
                "config": {"type": "string", "description": "the job config (JSON), as for POST /jobs"},
                "targets": {"type": "string", "description": 'more targets to predict (JSON list)'},
            }}},
        "application/json": {"schema": {"$ref": "#/components/schemas/PreflightIn"}},
    }}
}


class PreflightIn(BaseModel):
    """Pre-flight on stored inputs: the model (and dataset) ids, the job config, and more targets."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=36)
    dataset_id: str | None = Field(default=None, min_length=1, max_length=36)
    config: dict[str, Any]
    targets: list[dict[str, Any]] = Field(default_factory=list, max_length=_MAX_TARGETS)


class TargetOut(BaseModel):
    """One target's prediction: params and MACs after pruning, and whether a job can reach it."""

    target: dict[str, float]
    params: int | None
    nonzero_params: int | None
    flops: int | None = Field(description="multiply-accumulates per sample, as report.json counts them")
    reachable: bool
    reason: str | None
    pruning_ratio: float | None = None
    flops_reduction: float | None = None


class PreflightOut(BaseModel):
    """What a job with this config would meet; `ok` is false when it would fail (see `problems`)."""

    ok: bool
    problems: list[dict[str, str]] = Field(description="[{code, message}]: the codes a job would fail with")
    model_format: str
    input_shape: list[int]
    num_classes: int
    dataset_checked: bool = Field(description="false: no dataset sent, random inputs of the model's size")
    params: int
    flops: int
    cost: dict[str, int] = Field(description="the cost estimator's {params_bytes, peak_activation_bytes, "
                                             "flops_per_sample} (activations of one sample's forward pass)")
    groups: list[dict[str, Any]] = Field(description="what the method prunes (channel groups or layers)")
    excluded: list[dict[str, Any]] = Field(description="[{layer, reason}]: left alone, and why")
    unsupported: list[dict[str, Any]] = Field(description="left alone because an op cannot be modelled")
    targets: list[TargetOut]
    onnx_roundtrip: dict[str, Any] = Field(description="{passed, max_abs_diff, samples, onnx_bytes}")
    estimate_s: float | None = Field(description="the job's seconds on this API host's CPU (needs a dataset)")
    estimate_basis: str
    elapsed_s: float


@router.post("/preflight", response_model=PreflightOut, openapi_extra=_UPLOAD_OPENAPI,
             responses={status: {"model": ErrorBody} for status in (400, 401, 404, 413, 415, 422, 429, 503)})
async def preflight(request: Request, context: ContextDep, tenant: TenantDep) -> PreflightOut | Response:
    """Checks in seconds whether a job can prune this model: loading, input shape and classes, prunable
    groups (and what is left out and why), predicted params/FLOPs per target, the dense ONNX round trip
    and a duration estimate. Nothing is stored or queued."""
    if context.settings.preflight_url and FORWARDED not in request.headers:
        return await forward_preflight(request, context.settings)  # an API without the engine
    with tempfile.TemporaryDirectory(prefix="secateur-preflight-in-") as tmp:  # mode 0700, removed after
        folder = Path(tmp)
        if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
            body = PreflightIn.model_validate_json(await request.body())
            config_text, targets = json.dumps(body.config), body.targets
            ids: dict[InputKind, str | None] = {"model": body.model_id, "dataset": body.dataset_id}
            files: dict[str, Path] = {}
            for kind, input_id in ids.items():
                if input_id is not None:
                    files[kind] = folder / kind
                    await run_in_threadpool(_fetch_stored, context, tenant, kind, input_id, files[kind])
        else:
            texts, files = await _receive(request, folder, context.settings.max_upload_bytes)
            config_text, targets = texts["config"], _targets(texts.get("targets"))
        parse_config(config_text)  # a bad config is refused before any child starts
        for target in targets:
            _target(target)
        async with validation_shares(request).hold(tenant, context.settings.sandbox_timeout_s):
            answer = await run_in_threadpool(run_preflight_child, context.settings, model=files["model"],
                                             dataset=files.get("dataset"), config_text=config_text,
                                             targets=targets)
    return PreflightOut.model_validate(answer)


def _fetch_stored(context: AppContext, tenant: str, kind: InputKind, input_id: str, path: Path) -> None:
    """Copies the tenant's stored model or dataset to `path` (404 when the tenant has no such input)."""
    row = StoredInputs(context.jobs).get(tenant=tenant, kind=kind, input_id=input_id)
    context.jobs.store.get_to_file(as_job_input(row).key, path)


def _targets(text: str | None) -> list[dict[str, Any]]:
    """Parses the optional `targets` part: a JSON list of targets."""
    if text is None:
        return []
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"targets is not valid JSON: {exc}", code="invalid_config") from None
    if not isinstance(raw, list) or len(raw) > _MAX_TARGETS or not all(isinstance(t, dict) for t in raw):
        raise InvalidRequest(f"targets must be a JSON list of at most {_MAX_TARGETS} targets such as "
                             '{"pruning_ratio": 0.3}', code="invalid_config")
    return raw


def _target(raw: dict[str, Any]) -> None:
    """Refuses a malformed extra target with the config's own rules."""
    try:
        Target.model_validate(raw)
    except ValueError as exc:
        raise InvalidRequest(f"invalid target {raw}: {exc}", code="invalid_config") from None


async def _receive(request: Request, folder: Path, limit: int) -> tuple[dict[str, str], dict[str, Path]]:
    """Streams the multipart body: file parts into `folder`, text parts (64 KiB at most) into memory."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary", b"")
    if content_type != b"multipart/form-data" or not boundary:
        raise UnsupportedMediaType("send multipart/form-data (model, config, optional dataset and targets) "
                                   "or JSON with model_id")
    events = _Events()
    try:
        parser = MultipartParser(boundary, events.callbacks())
    except FormParserError as exc:  # e.g. a boundary over 256 bytes
        raise BadRequest(f"malformed multipart header: {exc}") from None
    texts: dict[str, bytearray] = {}
    files: dict[str, Path] = {}
    out: BinaryIO | None = None
    current: str | None = None
    done = False
    try:
        async for chunk in bounded_body(request, limit):
            _feed(parser, chunk)
            items, events.items = events.items, []
            for kind, data in items:
                if kind == "part":
                    current = _part_name(data, seen={*texts, *files})
                    if current in _FILES:
                        files[current] = folder / current
                        out = files[current].open("xb")
                    else:
                        texts[current] = bytearray()
                elif kind == "data" and out is not None:
                    await anyio.to_thread.run_sync(out.write, data)
                elif kind == "data" and current is not None:
                    texts[current] += data
                    if len(texts[current]) > 64 * 1024:
                        raise PayloadTooLarge(f"the {current} part is larger than 64 KiB")
                elif kind == "end" and out is not None:
                    out.close()
                    out = None
                elif kind == "done":
                    done = True
    finally:
        if out is not None:
            out.close()
    if not done:
        raise BadRequest("the multipart body ended before its closing boundary")
    missing = [name for name in ("model", "config") if name not in {*texts, *files}]
    if missing:
        raise InvalidRequest(f"missing part(s): {', '.join(missing)}", code="missing_part")
    return {k: v.decode("utf-8", "replace") for k, v in texts.items()}, files


def _part_name(disposition: bytes, *, seen: set[str]) -> str:
    """Returns a part's name if it is one pre-flight takes, once each."""
    _, options = parse_options_header(disposition)
    name = options.get(b"name", b"").decode("utf-8", "replace")
    if name not in (*_FILES, *_TEXTS):
        raise InvalidRequest(f"unexpected part {name!r}; pre-flight takes model, dataset, config and targets",
                             code="unexpected_part")
    if name in seen:
        raise InvalidRequest(f"part {name!r} was sent twice", code="duplicate_part")
    return name
