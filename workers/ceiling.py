"""A ceiling on every job: a memory limit and a CPU-time budget; crossing either fails it resources_exceeded.

- Memory: on a CPU job the process's soft RLIMIT_AS is lowered for the job's length so that new memory
  can take its resident size to `job_memory_bytes` and no further (an allocation beyond it raises
  MemoryError, which the runner turns into the code). CUDA reserves far more address space than it uses,
  so a CUDA job relies on the watcher thread, which stops any job whose resident size crosses the ceiling.
  The soft limit is restored afterwards (only the soft one is touched: a process that runs jobs in-process
  lives on).
- CPU: between two progress events (a training step, a stage) a job may use `job_step_cpu_s` CPU seconds,
  or more when the model's estimate says one step needs it (3 forward passes' FLOPs per sample, times the
  batch, at a pessimistic `job_cpu_flops_per_s`, times ten). A forward pass that runs for hours (20,000
  MatMuls over 4096x4096 tensors) never reaches its next step: the watcher asks the job to stop, and the
  lease guard's watchdog settles it and ends the process if it does not stop within `stop_grace_s`.
The watcher polls from a thread: torch releases the GIL in its kernels, so it runs while the job computes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from service.settings import Settings
from workers.compression.cost import ModelCost

__all__ = ["Ceiling", "ceiling_for", "job_memory_bytes", "model_cost", "out_of_host_memory", "resident_bytes",
           "watched"]

POLL_S = 0.5
_PAGE = os.sysconf("SC_PAGE_SIZE")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ceiling:
    """What one job may use: bytes of memory, CPU seconds between two progress events."""

    memory_bytes: int
    step_cpu_s: float

    def describe(self) -> str:
        """Returns the ceiling in words, for the job's error message."""
        return f"{self.memory_bytes / (1 << 30):.3g} GiB of memory, {self.step_cpu_s:.0f} CPU-s per step"


def job_memory_bytes(settings: Settings) -> int:
    """Returns the configured memory ceiling, or 3/4 of the machine's memory when none is set."""
    if settings.job_memory_bytes:
        return settings.job_memory_bytes
    return os.sysconf("SC_PHYS_PAGES") * _PAGE * 3 // 4


def ceiling_for(settings: Settings, cost: ModelCost | None, batch_size: int) -> Ceiling:
    """Returns a job's ceiling: the configured memory, and a per-step CPU budget from the model's estimate."""
    step = settings.job_step_cpu_s
    if cost is not None:
        step = max(step, 10 * 3 * cost.flops_per_sample * batch_size / settings.job_cpu_flops_per_s)
    return Ceiling(job_memory_bytes(settings), step)


def model_cost(path: Path, model_format: str) -> ModelCost | None:
    """Estimates an ONNX model's cost at its declared input shape; None for weights or a symbolic input
    (those jobs get the configured per-step budget). A graph the estimate refuses is refused at load."""
    if model_format != "onnx":
        return None
    from workers.compression.errors import UserError
    from workers.compression.onnx_cost import estimate_onnx_cost
    from workers.compression.onnx_import import read_onnx, signature

    try:
        proto = read_onnx(path)
        shape = signature(proto)[0]
        if any(d is None for d in shape):
            return None
        return estimate_onnx_cost(proto, tuple(int(d or 0) for d in shape))
    except UserError:
        return None  # the engine's loader refuses it with the same message


def out_of_host_memory(exc: BaseException) -> bool:
    """Tells whether an error, or one it was raised from, is a failed host allocation: Python's and numpy's
    MemoryError, torch's "DefaultCPUAllocator: can't allocate memory" RuntimeError, ENOMEM."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MemoryError) or getattr(seen, "errno", None) == errno.ENOMEM:
            return True
        if isinstance(seen, RuntimeError) and "can't allocate memory" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def resident_bytes() -> int:
    """Returns this process's resident set size now (Linux /proc; 0 where unavailable)."""
    return _statm(1)


def _statm(field: int) -> int:
    """Returns one /proc/self/statm field in bytes (0: mapped size, 1: resident size); 0 if unreadable."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[field]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


@contextlib.contextmanager
def watched(ceiling: Ceiling, *, cuda: bool, last_step_cpu_s: Callable[[], float],
            on_exceeded: Callable[[str], None]) -> Iterator[None]:
    """Runs the block under the ceiling: RLIMIT_AS (CPU jobs) and a watcher of RSS and CPU per step.

    The address-space limit is what is mapped now plus what the ceiling leaves above what is resident now:
    torch maps ~3.7 GiB of libraries it never reads in full, which would otherwise eat the allowance.
    """
    previous = resource.getrlimit(resource.RLIMIT_AS)
    allowance = _statm(0) + max(0, ceiling.memory_bytes - resident_bytes())
    limited = not cuda and _lower_address_space(allowance, previous)
    stop = threading.Event()
    thread = threading.Thread(target=_watch, args=(ceiling, stop, last_step_cpu_s, on_exceeded),
                              name="ceiling", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=POLL_S * 4)
        if limited:
            resource.setrlimit(resource.RLIMIT_AS, previous)


def _lower_address_space(limit: int, previous: tuple[int, int]) -> bool:
    """Lowers the soft address-space limit to `limit` (never above the hard one); False if it cannot."""
    soft, hard = previous
    wanted = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft <= wanted:
        return False  # already as tight
    try:
        resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot set the job's memory limit (%s); the watcher alone enforces it", exc)
        return False
    return True


def _watch(ceiling: Ceiling, stop: threading.Event, last_step_cpu_s: Callable[[], float],
           on_exceeded: Callable[[str], None]) -> None:
    """Polls resident size and CPU since the last progress event; reports the first crossing once."""
    while not stop.wait(POLL_S):
        rss = resident_bytes()
        step = time.process_time() - last_step_cpu_s()
        if rss > ceiling.memory_bytes:
            on_exceeded(f"its memory reached {rss / (1 << 30):.3g} GiB (the ceiling is "
                        f"{ceiling.memory_bytes / (1 << 30):.3g} GiB)")
            return
        if step > ceiling.step_cpu_s:
            on_exceeded(f"it used {step:.0f} CPU seconds without reaching its next step (the budget is "
                        f"{ceiling.step_cpu_s:.0f})")
            return
