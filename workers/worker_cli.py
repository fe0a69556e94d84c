"""`secateur worker`: a Celery worker for the configured broker, one job process per GPU by default.

The parent process only consumes wake-ups and forks; it never imports torch or touches CUDA. Each job
runs in a fresh child (max one task per child), which imports the engine and picks CUDA when present.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from service.settings import get_settings
from workers.celery_app import make_celery

__all__ = ["main", "worker_argv"]


def worker_argv(concurrency: int, loglevel: str) -> list[str]:
    """The `celery worker` arguments: prefork pool, a unique node name, no cluster chatter."""
    return [
        "worker", "--pool=prefork", f"--concurrency={concurrency}", f"--loglevel={loglevel}",
        # pid in the node name: several workers on one host (tests, one per GPU) must not collide
        f"--hostname=secateur-{os.getpid()}@%h",
        "--without-mingle", "--without-gossip",
    ]


def main(args: Sequence[str] | None = None) -> int:
    """Parses `secateur worker` options and runs the worker until it is stopped (SIGTERM: warm shutdown)."""
    parser = argparse.ArgumentParser(prog="secateur worker", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=1,
                        help="job processes run at once (default 1: one worker process per GPU)")
    parser.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    opts = parser.parse_args(args)
    if opts.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    settings = get_settings()
    # Inherited by every job child before it imports torch: OpenMP/MKL start with the configured threads.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(settings.torch_threads))
    make_celery(settings).worker_main(worker_argv(opts.concurrency, opts.loglevel))
    return 0
