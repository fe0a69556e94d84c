"""`POST /datasets/validate` on 1 GB image archives: does the dataset check answer in seconds?

    python -m bench.dataset_check [--gigabytes 1] [--repeats 3] [--tmp DIR]

Generates an ImageNet-style archive of about `--gigabytes` GB (bench/data_loading.generate_archive: ~65 KB
JPEGs, 10 classes, no val/) as a stored ZIP and as a .tar.gz, starts the embedded service (`python -m
service.cli serve`: uvicorn, SQLite, local objects) on a free loopback port, and per format times
- `POST /datasets/validate` from the first byte sent to the answer (upload, sandboxed checker, JSON);
- the checker alone (`python -m workers.compression.dataset_check check FILE --json`, the sandbox's
  command without the upload), its CPU seconds too (a .tar.gz inflates on a second thread);
each `--repeats` times, the median kept. The 1-minute load average is recorded beside each figure: this
box's 2 cores are shared, and others' work slows every one of them.
Writes bench/results/dataset_check.{jsonl,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.cli import BENCH_DIR
from bench.data_loading import generate_archive
from bench.service_figures import ROOT, free_port
from bench.tables import markdown, record_results

__all__ = ["main"]

BENCH = "dataset_check"
_READY_S = 120.0


@contextmanager
def _service(data_dir: Path) -> Iterator[httpx.Client]:
    """Runs the embedded service until the block ends; yields a client for it, once it is ready."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SECATEUR_MAX_UPLOAD_BYTES": str(4 << 30)}
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port),
                               "--data-dir", str(data_dir)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            deadline = time.monotonic() + _READY_S
            while not _ready(client):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the embedded service did not become ready")
                time.sleep(0.5)
            yield client
    finally:
        server.terminate()
        server.wait(timeout=60)


def _ready(client: httpx.Client) -> bool:
    """Says whether the service answers /readyz with 200."""
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def _post(client: httpx.Client, path: Path) -> tuple[float, dict[str, Any]]:
    """POSTs one archive to /datasets/validate; returns the seconds to its answer and the answer."""
    started = time.perf_counter()
    with path.open("rb") as f:
        response = client.post("/datasets/validate", files={"file": (path.name, f)})
    seconds = time.perf_counter() - started
    response.raise_for_status()
    facts: dict[str, Any] = response.json()
    return seconds, facts


def _checker(path: Path) -> tuple[float, float]:
    """Runs the checker alone; returns its wall and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "workers.compression.dataset_check", "check", str(path), "--json"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Generates both archives, then times the POST and the checker on each."""
    records = []
    with tempfile.TemporaryDirectory(prefix="bench-check-", dir=args.tmp) as tmp:
        folder = Path(tmp)
        archives = {kind: folder / f"images.{kind}" for kind in ("zip", "tar.gz")}
        images = {kind: generate_archive(path, args.gigabytes, kind=kind) for kind, path in archives.items()}
        with _service(folder / "service") as client:
            for kind, path in archives.items():
                posts, walls, cpus, loads = [], [], [], []
                for _ in range(args.repeats):
                    loads.append(os.getloadavg()[0])
                    seconds, facts = _post(client, path)
                    posts.append(seconds)
                    wall, cpu = _checker(path)
                    walls.append(wall)
                    cpus.append(cpu)
                assert sum(facts["splits"].values()) == images[kind], facts["splits"]
                records.append({"bench": BENCH, "format": kind, "gigabytes": path.stat().st_size / 1e9,
                                "images": images[kind], "post_s": statistics.median(posts),
                                "checker_s": statistics.median(walls),
                                "checker_cpu_s": statistics.median(cpus),
                                "load_1min": statistics.median(loads), "repeats": args.repeats})
                print(json.dumps(records[-1]), flush=True)
    return records


def table(records: Sequence[dict[str, Any]]) -> str:
    """Renders the records as a markdown table."""
    return markdown(
        ["archive", "images", "POST /datasets/validate (s)", "checker alone (s)", "checker CPU (s)",
         "load (1 min, 2 cores)"],
        [[f"{r['gigabytes']:.2f} GB {r['format']}", str(r["images"]), f"{r['post_s']:.1f}",
          f"{r['checker_s']:.1f}", f"{r['checker_cpu_s']:.1f}", f"{r['load_1min']:.1f}"] for r in records])


def main(argv: Sequence[str] | None = None) -> int:
    """Measures and appends the records to bench/results/dataset_check.{jsonl,md}."""
    p = argparse.ArgumentParser(prog="python -m bench.dataset_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--gigabytes", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tmp", type=Path, default=None, help="where the archives are generated")
    args = p.parse_args(argv)
    records = measure(args)
    record_results(BENCH_DIR / "results", BENCH, records, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
