"""Object keys, derived from (tenant, job id), never from user input: each job owns one folder.

Layout: `tenants/<tenant>/jobs/<job id>/{inputs/model, inputs/dataset, artifacts/<name>, checkpoints/latest}`,
and `tenants/<tenant>/inputs/<input id>` for a stored model or dataset (`POST /models`, `POST /datasets`).
"""

from __future__ import annotations

import re
import uuid
from typing import Literal

__all__ = [
    "ARTIFACT_NAMES",
    "InputKind",
    "artifact_key",
    "check_key",
    "checkpoint_key",
    "input_key",
    "job_prefix",
    "stored_input_key",
]

InputKind = Literal["model", "dataset"]
ARTIFACT_NAMES: tuple[str, ...] = ("model.onnx", "model.onnx.zst", "report.json")

_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# One path segment: no empty, ".", ".." or hidden names, no separators of any OS.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_MAX_KEY = 1024


def check_key(key: str) -> str:
    """Returns `key` if it is a safe relative key (cannot escape a root folder); raises ValueError if not."""
    if not key or len(key) > _MAX_KEY or not all(_SEGMENT.fullmatch(s) for s in key.split("/")):
        raise ValueError(f"unsafe object key {key!r}")
    return key


def _is_uuid(text: str) -> bool:
    """Tells whether `text` is a UUID in its canonical lower-case form (as `new_job_id` makes them)."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _tenant_folder(tenant: str, object_id: str, what: str) -> str:
    """Returns `tenants/<tenant>/` after checking the tenant and that the object id is a canonical UUID."""
    if not _TENANT.fullmatch(tenant):
        raise ValueError(f"invalid tenant {tenant!r}")
    if not _is_uuid(object_id):
        raise ValueError(f"invalid {what} id {object_id!r}")
    return f"tenants/{tenant}/"


def job_prefix(tenant: str, job_id: str) -> str:
    """Returns the folder (ending in "/") that holds every object of one job."""
    return f"{_tenant_folder(tenant, job_id, 'job')}jobs/{job_id}/"


def stored_input_key(tenant: str, input_id: str) -> str:
    """Returns the key of a stored model or dataset (shared by every job that names its id)."""
    return f"{_tenant_folder(tenant, input_id, 'input')}inputs/{input_id}"


def input_key(tenant: str, job_id: str, kind: InputKind) -> str:
    """Returns the key of an uploaded input ("model" or "dataset")."""
    if kind not in ("model", "dataset"):
        raise ValueError(f"invalid input kind {kind!r}")
    return f"{job_prefix(tenant, job_id)}inputs/{kind}"


def artifact_key(tenant: str, job_id: str, name: str) -> str:
    """Returns the key of a job's output (model.onnx, model.onnx.zst or report.json)."""
    if name not in ARTIFACT_NAMES:
        raise ValueError(f"invalid artifact name {name!r}")
    return f"{job_prefix(tenant, job_id)}artifacts/{name}"


def checkpoint_key(tenant: str, job_id: str) -> str:
    """Returns the key of a job's latest training checkpoint."""
    return f"{job_prefix(tenant, job_id)}checkpoints/latest"
