"""Runs the engine's pre-flight (`secateur preflight`) on received files in the upload sandbox's child.

The same confinement as the submit-time check (service/jobs/sandbox.py): an environment without secrets,
limits the child sets on itself (address space, CPU seconds, open files; bytes per written file, enough
for the dense model's ONNX export in its scratch folder), a wall-clock kill of its process group, and the
same bound on children at once. The child is started ahead of the request with the engine imported
(service/jobs/preflight_spare.py) and gets its arguments on stdin. Torch loads in the child only: where the
API image has no torch, the child cannot import the engine and pre-flight answers 503 preflight_unavailable.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from service.errors import InvalidRequest, ServiceError, Unavailable
from service.jobs.preflight_spare import keep_spare_ready, take_spare
from service.jobs.sandbox import PARSE_TIMEOUT, _slot, collect_child
from service.settings import Settings
from workers.compression.errors import UserError

__all__ = ["PREFLIGHT_TIMEOUT", "run_preflight_child"]

PREFLIGHT_TIMEOUT = "preflight_timeout"
_FILE_BYTES = 3 << 30  # the largest file the child may write: a dense ONNX export (protobuf stops at 2 GiB)
log = logging.getLogger(__name__)


def _engine_errors() -> dict[str, type[UserError]]:
    """Every refusal the engine can type, by code (so the API answers with the job's own error)."""
    found: dict[str, type[UserError]] = {}
    pending: list[type[UserError]] = [UserError]
    while pending:
        cls = pending.pop()
        found[cls.code] = cls
        pending += cls.__subclasses__()
    return found


def run_preflight_child(settings: Settings, *, model: Path, dataset: Path | None, config_text: str,
                        targets: list[dict[str, Any]]) -> dict[str, Any]:
    """Returns the engine's pre-flight answer for the files, or raises the refusal a job would meet."""
    with _slot(settings):
        child = take_spare()
        try:
            config = child.root / "config.json"
            config.write_text(config_text)
            request = (json.dumps(_words(settings, model, dataset, config, targets)) + "\n").encode()
            lines, returncode, stderr = collect_child(child.proc, settings.preflight_timeout_s, request)
        except InvalidRequest as exc:
            if exc.code != PARSE_TIMEOUT:
                raise
            limit = settings.preflight_timeout_s
            raise InvalidRequest(f"pre-flight took longer than {limit:g} s; a job on this model would be "
                                 "slow to even start", code=PREFLIGHT_TIMEOUT) from None
        finally:
            child.discard()
            if settings.preflight_spare:
                keep_spare_ready()
    return _answer(lines, returncode, stderr)


def _words(settings: Settings, model: Path, dataset: Path | None, config: Path,
           targets: list[dict[str, Any]]) -> list[str]:
    """The child's `secateur preflight` arguments: the files, the threads and the sandbox's limits."""
    cpu_s = int(settings.preflight_timeout_s * settings.preflight_threads) + 1
    words = ["--model", str(model), "--config", str(config), "--threads", str(settings.preflight_threads),
             "--sandbox-memory-bytes", str(settings.preflight_memory_bytes), "--sandbox-cpu-s", str(cpu_s),
             "--sandbox-file-bytes", str(_FILE_BYTES)]
    words += ["--dataset", str(dataset)] if dataset is not None else []
    for target in targets:
        words += ["--also", json.dumps(target)]
    return words


def _answer(lines: list[dict[str, Any]], returncode: int, stderr: str) -> dict[str, Any]:
    """Turns the child's verdict line into the answer, the typed refusal, or a coded failure."""
    final = next((line for line in reversed(lines) if "verdict" in line), None)
    if final is not None and final["verdict"] == "answer":
        answer: dict[str, Any] = final["preflight"]
        return answer
    if final is not None and final["verdict"] == "refused":
        code, message = str(final.get("code")), str(final.get("message", ""))
        error = _engine_errors().get(code)
        if error is not None:
            raise error(message)
        raise InvalidRequest(message, code=code)
    if final is not None:  # the analysis broke on this model in a way nobody typed
        log.warning("pre-flight failed on a model: %s", final.get("message"))
        raise InvalidRequest(f"pre-flight could not analyse this model ({final.get('message')})",
                             code="preflight_failed")
    if "ModuleNotFoundError" in stderr:  # an API image without torch: pre-flight runs where jobs do
        raise Unavailable("pre-flight needs the engine (torch), which this API's image does not hold",
                          code="preflight_unavailable")
    if returncode < 0:
        raise InvalidRequest("pre-flight went past its limits (memory, CPU time or file size) on this model",
                             code="preflight_resources_exceeded")
    log.error("pre-flight child failed (exit %s): %s", returncode, stderr[-2000:])
    raise ServiceError("pre-flight could not run; it has been logged", code="preflight_broken")
