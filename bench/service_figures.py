"""The service's figures: POST → worker start, status-poll latency under load, API memory during an upload.

Starts the real embedded service (`secateur serve`: uvicorn + a worker child, SQLite, local objects) on a
free loopback port and measures, in one run:
1. seconds from `POST /jobs` to the worker's claim (`started_at − created_at` of tiny jobs), median of N;
2. `GET /jobs/{id}` latency p50/p99 while a SECOND PROCESS polls at a fixed open-loop rate (200 rps);
3. the API process's peak resident memory (VmHWM) while a ~1 GB dataset streams into `POST /jobs`.
Usage: python -m bench.service_figures [--rps 200] [--seconds 10] [--upload-mb 1024]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
from safetensors.numpy import save as save_safetensors

ROOT = Path(__file__).resolve().parents[1]
MLP_CONFIG = {"method": "magnitude", "architecture": "mlp", "target": {"sparsity": 0.5},
              "finetune": {"epochs": 1, "batch_size": 64}}


def free_port() -> int:
    """Returns a loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(client: httpx.Client) -> None:
    """Polls /readyz for up to 2 minutes while the server starts (connection refused until it listens)."""
    for _ in range(240):
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)


def tiny_inputs(folder: Path) -> tuple[Path, Path]:
    """Writes random LeNet-300-100 weights for 8x8 inputs and a small 10-class npz."""
    rng = np.random.default_rng(0)
    shapes = {"fc1.weight": (300, 64), "fc1.bias": (300,), "fc2.weight": (100, 300), "fc2.bias": (100,),
              "fc3.weight": (10, 100), "fc3.bias": (10,)}
    weights = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    model = folder / "mlp.safetensors"
    model.write_bytes(save_safetensors(weights))
    data = folder / "tiny.npz"
    np.savez(data, x_train=rng.integers(0, 255, (256, 1, 8, 8), dtype=np.uint8),
             y_train=rng.integers(0, 10, 256), x_val=rng.integers(0, 255, (64, 1, 8, 8), dtype=np.uint8),
             y_val=rng.integers(0, 10, 64))
    return model, data


def submit(client: httpx.Client, model: Path, dataset: Path) -> dict[str, object]:
    """POSTs one job and returns its JSON body."""
    with model.open("rb") as m, dataset.open("rb") as d:
        response = client.post("/jobs", files={"model": m, "dataset": d},
                               data={"config": json.dumps(MLP_CONFIG)}, timeout=600)
    body: dict[str, object] = response.json()
    if response.status_code != 202:
        raise RuntimeError(f"submit refused: {response.status_code} {body}")
    return body


def post_to_start(client: httpx.Client, model: Path, dataset: Path, jobs: int) -> list[float]:
    """Returns started_at − created_at for `jobs` tiny jobs submitted one after another."""
    delays = []
    for _ in range(jobs):
        job_id = str(submit(client, model, dataset)["id"])
        while True:
            job = client.get(f"/jobs/{job_id}").json()
            if job["status"] in {"succeeded", "failed", "cancelled"}:
                break
            time.sleep(0.2)
        started, created = (datetime.fromisoformat(job[k]) for k in ("started_at", "created_at"))
        delays.append((started - created).total_seconds())
    return delays


def poll_at_rate(url: str, path: str, rps: int, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """In a second process: GETs `path` on an open-loop schedule of `rps` and reports latencies (ms)."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    start = time.perf_counter() + 0.2
    threads = 16

    def shoot(offset: int) -> None:
        """Sends every `threads`-th request of the schedule; latency counts from its scheduled time."""
        nonlocal errors
        with httpx.Client(base_url=url, timeout=10) as client:
            for i in range(offset, int(rps * seconds), threads):
                due = start + i / rps
                time.sleep(max(0.0, due - time.perf_counter()))
                ok = client.get(path).status_code == 200
                took = (time.perf_counter() - due) * 1000  # includes any queueing behind a late start
                with lock:
                    latencies.append(took)
                    errors += not ok

    workers = [threading.Thread(target=shoot, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put((latencies, errors))


def peak_rss_mb(pid: int) -> float:
    """Returns a process's peak resident memory (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def reset_peak(pid: int) -> None:
    """Resets VmHWM to the current RSS (Linux: write 5 to clear_refs), so the next peak is the upload's."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def big_npz(path: Path, megabytes: int) -> None:
    """Writes an uncompressed npz of about `megabytes` MiB of uint8 CIFAR-shaped images, chunk by chunk."""
    n = megabytes * 1024 * 1024 // 3072
    # A zero-filled memory map: np.savez then streams it to the archive without holding 1 GB in memory.
    images = np.lib.format.open_memmap(path.with_suffix(".npy"), mode="w+", dtype=np.uint8,
                                       shape=(n, 3, 32, 32))
    labels = np.zeros(n, dtype=np.int64)
    np.savez(path, x_train=images, y_train=labels, x_val=images[:64], y_val=labels[:64])
    path.with_suffix(".npy").unlink()


def upload_peak(client: httpx.Client, pid: int, model: Path, dataset: Path) -> tuple[float, float, int]:
    """Streams the big dataset into POST /jobs; returns (RSS before, peak RSS during, status code)."""
    reset_peak(pid)
    before = peak_rss_mb(pid)
    with model.open("rb") as m, dataset.open("rb") as d:
        response = client.post("/jobs", files={"model": m, "dataset": d},
                               data={"config": json.dumps(MLP_CONFIG)}, timeout=1800)
    return before, peak_rss_mb(pid), response.status_code


def pct(values: list[float], q: float) -> float:
    """Returns the q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    """Starts the embedded service, measures the three figures and prints them as a markdown table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rps", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--upload-mb", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="secateur-figures-") as tmp:
        folder = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "SECATEUR_MAX_UPLOAD_BYTES": str(4 << 30)}
        server = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port),
             "--data-dir", str(folder / "d")],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                wait_ready(client)
                model, dataset = tiny_inputs(folder)
                delays = post_to_start(client, model, dataset, args.jobs)
                job_id = str(submit(client, model, dataset)["id"])
                queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()  # type: ignore[type-arg]
                poller = multiprocessing.get_context("spawn").Process(
                    target=poll_at_rate, args=(url, f"/jobs/{job_id}", args.rps, args.seconds, queue))
                poller.start()
                latencies, errors = queue.get()
                poller.join()
                big = folder / "big.npz"
                big_npz(big, args.upload_mb)
                before, peak, status = upload_peak(client, server.pid, model, big)
        finally:
            server.terminate()
            server.wait(timeout=60)
    rows = [
        (f"POST → worker start (embedded, median of {len(delays)})", f"{statistics.median(delays):.2f} s "
         f"(min {min(delays):.2f}, max {max(delays):.2f})"),
        (f"GET /jobs/{{id}} at {args.rps} rps for {args.seconds:.0f} s from a second process",
         f"p50 {pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms, {errors} errors "
         f"of {len(latencies)}"),
        (f"API peak RSS while a {args.upload_mb} MiB dataset streams into POST /jobs (answered {status})",
         f"{peak:.0f} MiB (before: {before:.0f} MiB)"),
    ]
    out = io.StringIO()
    out.write("| figure | measured |\n|---|---|\n")
    for name, value in rows:
        out.write(f"| {name} | {value} |\n")
    print(out.getvalue())


if __name__ == "__main__":
    main()
