"""What a locked-down checker child caps about itself, and the codes of its two non-input failures.

Stdlib only: the dataset checker (dataset_check.py) imports this without the model validator's onnx
(importing onnx costs ~1 s of CPU, a tenth of the dataset check's budget on a 1 GB archive).
"""

from __future__ import annotations

import resource

__all__ = ["MAX_OPEN_FILES", "RESOURCES_EXCEEDED", "VALIDATOR_BROKEN", "limit_resources"]

RESOURCES_EXCEEDED = "parse_resources_exceeded"
VALIDATOR_BROKEN = "validator_unavailable"  # the child cannot run at all: a server fault, never the input's
MAX_OPEN_FILES = 64  # the interpreter, its libraries and two inputs need far fewer


def limit_resources(*, memory_bytes: int, cpu_s: int) -> None:
    """Caps this process before it touches untrusted bytes: memory, CPU time, files written, files open."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU at the soft limit, SIGKILL after
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # any write to a file: SIGXFSZ
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES))
