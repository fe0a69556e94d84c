"""Deep checks of a job's uploads at submit time, in a child process that holds no secrets and has limits.

The API never parses an upload itself beyond magic bytes: it copies both stored objects into a private
temp folder (verifying each against the sha256 computed while the upload streamed in, so the bytes checked
are the bytes the worker will get), then runs `python -m workers.compression.validate` on them with:
- an environment of its own (PATH, HOME and TMPDIR in a scratch folder, one thread): no AWS_* keys,
  no SECATEUR_* settings, no database URL reach the code that touches untrusted bytes;
- limits the child sets on itself before opening either file (address space, CPU seconds, files written: 0,
  open files) and a wall-clock timeout enforced here (the child's process group is killed);
- a bound on how many children run at once in this process.
A refusal, a crash, a timeout or a limit becomes a 4xx with a reason code, never a 500 or a hung request.
Runs in a worker thread (the submit path is already off the event loop); torch never loads here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import workers
from service.errors import InvalidRequest, ServiceError, Unavailable
from service.settings import Settings
from service.storage.base import ObjectStore, StorageError
from workers.compression.errors import (
    InvalidConfig,
    InvalidDataset,
    InvalidModel,
    ModelTooCostly,
    UnsupportedModelFormat,
    UnsupportedOp,
    UserError,
)
from workers.compression.validate import RESOURCES_EXCEEDED, VALIDATOR_BROKEN

if TYPE_CHECKING:
    from service.jobs.service import StoredInput

__all__ = ["PARSE_TIMEOUT", "RESOURCES_EXCEEDED", "Inspection", "check_dataset_file", "child_env",
           "collect_child", "inspect_uploads", "start_child"]

PARSE_TIMEOUT = "parse_timeout"
CODE_ROOT = Path(workers.__file__).resolve().parents[1]  # where `workers` is importable from
_ENGINE_ERRORS: dict[str, type[UserError]] = {
    cls.code: cls
    for cls in (InvalidConfig, InvalidDataset, InvalidModel, ModelTooCostly, UnsupportedModelFormat,
                UnsupportedOp)
}
_STAGE_ERRORS: dict[str, type[UserError]] = {"dataset": InvalidDataset, "model": InvalidModel}
# Signals that mean "a limit stopped it": CPU (soft, then hard SIGKILL) and file size (a write was tried).
_LIMIT_SIGNALS = frozenset({signal.SIGXCPU, signal.SIGKILL, signal.SIGXFSZ})

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inspection:
    """What the sandbox learned: both formats by content, one sample's shape and the class count."""

    model_format: str
    dataset_format: str
    input_shape: tuple[int, ...]
    num_classes: int


def inspect_uploads(store: ObjectStore, settings: Settings, *, model: StoredInput, dataset: StoredInput,
                    architecture: str | None) -> Inspection:
    """Validates both stored uploads in a sandboxed child; raises the typed 4xx refusal when they fail."""
    with _slot(settings), tempfile.TemporaryDirectory(prefix="secateur-check-") as tmp:
        root = Path(tmp)  # mode 0700: only this service's user can read the copies
        model_path, dataset_path = root / "model", root / "dataset"
        _fetch(store, model.key, model.sha256, model_path)
        _fetch(store, dataset.key, dataset.sha256, dataset_path)
        scratch = root / "scratch"
        scratch.mkdir()
        argv = [sys.executable, "-B", "-s", "-m", "workers.compression.validate",
                "--model", str(model_path), "--dataset", str(dataset_path),
                "--memory-bytes", str(settings.sandbox_memory_bytes), "--cpu-s", str(settings.sandbox_cpu_s),
                "--max-params-bytes", str(settings.max_model_params_bytes),
                "--max-activation-bytes", str(settings.max_activation_bytes_per_sample),
                "--max-flops", str(settings.max_flops_per_sample)]
        if architecture is not None:
            argv += ["--architecture", architecture]
        lines, returncode, stderr = _run(argv, scratch, settings.sandbox_timeout_s)
    return _verdict(lines, returncode, stderr)


def child_env(scratch: Path) -> dict[str, str]:
    """The child's whole environment: nothing inherited, so no credential can leak into it."""
    return {
        "PATH": os.defpath,
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "PYTHONPATH": str(CODE_ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        # torch (imported for zoo weights, via torchvision) picks its compile cache dir at import; without
        # this it probes tempfile.gettempdir() with a test write, which RLIMIT_FSIZE=0 refuses.
        "TORCHINDUCTOR_CACHE_DIR": str(scratch / "torch"),
    }


@cache
def _semaphore(size: int) -> threading.BoundedSemaphore:
    """Returns this process's bound on concurrent validation children (one per configured size)."""
    return threading.BoundedSemaphore(size)


@contextlib.contextmanager
def _slot(settings: Settings) -> Iterator[None]:
    """Holds one of the concurrent-validation slots; 503 when none frees up within the timeout."""
    semaphore = _semaphore(settings.sandbox_concurrency)
    if not semaphore.acquire(timeout=settings.sandbox_timeout_s):
        raise Unavailable("too many uploads are being checked right now; retry shortly",
                          code="validation_busy", headers={"Retry-After": "10"})
    try:
        yield
    finally:
        semaphore.release()


def _fetch(store: ObjectStore, key: str, sha256: str, path: Path) -> None:
    """Copies a stored upload to `path`, refusing bytes that differ from what was received."""
    digest = hashlib.sha256()
    with path.open("xb") as f:
        for chunk in store.open_stream(key):
            digest.update(chunk)
            f.write(chunk)
    if digest.hexdigest() != sha256:
        raise StorageError(f"object {key} changed after it was uploaded (sha256 mismatch)")


def _run(argv: list[str], scratch: Path, timeout_s: float) -> tuple[list[dict[str, Any]], int, str]:
    """Runs the child in its own session; kills its whole process group when the wall clock runs out."""
    return collect_child(start_child(argv, scratch), timeout_s)


def start_child(argv: list[str], scratch: Path, *, await_input: bool = False) -> subprocess.Popen[bytes]:
    """Starts a sandbox child in its own session and environment, in `scratch`; with `await_input` its stdin
    is a pipe that `collect_child` writes to (a child started ahead of its request reads it there)."""
    stdin = subprocess.PIPE if await_input else subprocess.DEVNULL
    return subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=scratch,
                            env=child_env(scratch), start_new_session=True)


def collect_child(proc: subprocess.Popen[bytes], timeout_s: float,
                  request: bytes | None = None) -> tuple[list[dict[str, Any]], int, str]:
    """Hands the child its `request` (if any) and waits for it; kills its whole process group when the wall
    clock runs out or the caller is interrupted. Returns its JSON lines, exit status and stderr."""
    try:
        out, err = proc.communicate(request, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise InvalidRequest(f"checking the uploads took longer than {timeout_s:g} s; they are refused",
                             code=PARSE_TIMEOUT) from None
    except BaseException:  # e.g. the request was cancelled: never leave the child behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    lines = []
    for raw in out.decode("utf-8", "replace").splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(raw))
    return [line for line in lines if isinstance(line, dict)], proc.returncode, err.decode("utf-8", "replace")


def _verdict(lines: list[dict[str, Any]], returncode: int, stderr: str) -> Inspection:
    """Turns the child's output and exit status into an Inspection or the matching refusal."""
    final = next((line for line in reversed(lines) if "ok" in line), None)
    if final is not None and final["ok"] is True:
        return Inspection(str(final["model_format"]), str(final["dataset_format"]),
                          tuple(int(d) for d in final["input_shape"]), int(final["num_classes"]))
    if final is not None:
        _refuse(final, "upload validator")
    stages = [str(line["stage"]) for line in lines if "stage" in line]
    if returncode < 0 and -returncode in _LIMIT_SIGNALS:
        raise InvalidRequest("checking the uploads went past the validation limits (CPU time or file "
                             "writes); they are refused", code=RESOURCES_EXCEEDED)
    if not stages:  # it died before opening any input: a deployment problem, not the uploader's
        log.error("upload validator failed to start (exit %s): %s", returncode, stderr[-2000:])
        raise ServiceError("the upload validator could not start; it has been logged", code=VALIDATOR_BROKEN)
    stage = stages[-1]
    log.warning("upload validator crashed on the %s (exit %s): %s", stage, returncode, stderr[-2000:])
    raise _STAGE_ERRORS[stage](f"the {stage} file crashed the parser (exit status {returncode}); it is "
                               "refused")


def _refuse(final: dict[str, Any], checker: str) -> NoReturn:
    """Raises what a child's failed final line says: the engine's refusal, a limit, or a server fault."""
    code, message = str(final.get("code")), str(final.get("message", ""))
    if code in _ENGINE_ERRORS:
        raise _ENGINE_ERRORS[code](message)
    if code == RESOURCES_EXCEEDED:
        raise InvalidRequest(message, code=RESOURCES_EXCEEDED)
    log.error("%s cannot run: %s %s", checker, code, message)
    raise ServiceError(f"the {checker} could not run; it has been logged", code=VALIDATOR_BROKEN)


def check_dataset_file(path: Path, settings: Settings) -> dict[str, Any]:
    """Runs `secateur dataset check` on a received file in the same sandbox as the submit-time check (own
    environment, self-imposed limits, wall-clock kill); returns its facts or raises the typed 4xx."""
    with _slot(settings), tempfile.TemporaryDirectory(prefix="secateur-dataset-check-") as tmp:
        argv = [sys.executable, "-B", "-s", "-m", "workers.compression.dataset_check", "check", str(path),
                "--json", "--memory-bytes", str(settings.sandbox_memory_bytes),
                "--cpu-s", str(settings.sandbox_cpu_s)]
        lines, returncode, stderr = _run(argv, Path(tmp), settings.sandbox_timeout_s)
    final = next((line for line in reversed(lines) if "ok" in line), None)
    if final is not None and final["ok"] is True:
        return {k: v for k, v in final.items() if k != "ok"}
    if final is not None:
        _refuse(final, "dataset checker")
    if returncode < 0 and -returncode in _LIMIT_SIGNALS:
        raise InvalidRequest("checking the dataset went past the validation limits (CPU time or file "
                             "writes); it is refused", code=RESOURCES_EXCEEDED)
    log.warning("dataset checker crashed (exit %s): %s", returncode, stderr[-2000:])
    raise InvalidDataset(f"the dataset file crashed the checker (exit status {returncode}); it is refused")
