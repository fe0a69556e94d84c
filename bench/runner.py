"""Runs many engine compressions in parallel single-threaded processes and keeps one JSON line per run.

Each run is one `pipeline.compress` call, so every number in the tables comes from the product's own
report.json (which also lands, with the ONNX model, in the run's folder). Runs already recorded as
successful in the JSONL file are skipped, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.budget import wall_seconds
from bench.data import weights_file

__all__ = ["BULKY_METHOD_KEYS", "RunSpec", "Setup", "execute", "read_jsonl", "successful"]

# Long per-channel lists that report.json keeps but the tables never read.
BULKY_METHOD_KEYS = ("removed_channels", "skipped_groups")


@dataclass(frozen=True)
class RunSpec:
    """One planned compress run: a stable id, the JobConfig fields, and the table columns it fills."""

    run_id: str
    arch: str
    config: dict[str, Any]
    labels: dict[str, Any]
    estimate_s: float


@dataclass(frozen=True)
class Setup:
    """Where a benchmark reads its data and writes its results, and how many processes it uses."""

    bench: str
    dataset: Path
    results_dir: Path  # holds <bench>.jsonl and <bench>.md
    workers: int
    device: str

    @property
    def jsonl(self) -> Path:
        """Returns the benchmark's raw results file (one JSON object per run)."""
        return self.results_dir / f"{self.bench}.jsonl"

    def run_dir(self, run_id: str) -> Path:
        """Returns the folder of one run's model.onnx, model.onnx.zst and report.json."""
        return self.results_dir / "runs" / self.bench / run_id.replace("/", "_")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Returns every record of a JSONL file (none when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def successful(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Returns the last successful record of each run id (a retried run replaces its failed attempt)."""
    latest = {r["run_id"]: r for r in records if r.get("status") == "ok"}
    return list(latest.values())


def _record(spec: RunSpec, report: dict[str, Any], wall_s: float, out_dir: Path) -> dict[str, Any]:
    """Extracts what the tables need from report.json (whole blocks, so later tables can use more)."""
    history = report["history"]
    epoch_s = sum(h["seconds"] for h in history)
    train = report["inputs"]["train_samples"]
    env = report["environment"]
    return {
        "run_id": spec.run_id, "status": "ok", **spec.labels, "method": report["method"]["name"],
        "baseline_accuracy": report["baseline"]["accuracy"],
        "final_accuracy": report["pruned"]["accuracy"],
        "achieved": report["target"]["achieved"],
        "baseline": report["baseline"], "pruned": report["pruned"],
        "method_report": {k: v for k, v in report["method"].items() if k not in BULKY_METHOD_KEYS},
        "history": history,
        # Whole-split epochs only (a fractional last epoch would overstate the rate); includes evaluation.
        "images_per_s_with_eval": len(history) * train / epoch_s if epoch_s > 0 else None,
        "timings_s": report["timings_s"],
        "environment": {k: env[k] for k in ("device", "device_name", "threads", "torch", "onnxruntime")},
        "inputs": {k: report["inputs"][k] for k in ("train_samples", "val_samples", "dataset_sha256")},
        "config": report["config"],
        "wall_s": wall_s,
        "report_path": str(out_dir / "report.json"),
    }


def _compress_one(spec: RunSpec, dataset: Path, out_dir: Path, device: str) -> dict[str, Any]:
    """Runs one compression in this (spawned, single-threaded) worker and returns its JSONL record."""
    # Imported here, in the worker: the parent never loads torch, so nothing multi-threaded is forked.
    import torch

    from workers.compression.config import JobConfig
    from workers.compression.pipeline import compress

    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        result = compress(
            model_path=weights_file(spec.arch), dataset_path=dataset,
            config=JobConfig.model_validate(spec.config), out_dir=out_dir, device=device, threads=1,
        )
    except Exception as exc:  # a failed run is a result too (e.g. TPP's removal-mismatch check)
        return {"run_id": spec.run_id, "status": "error", **spec.labels,
                "error": f"{type(exc).__name__}: {exc}", "wall_s": time.perf_counter() - start}
    return _record(spec, result.report, time.perf_counter() - start, out_dir)


def _append(path: Path, record: dict[str, Any]) -> None:
    """Appends one record as a JSON line and flushes it, so a crash loses at most the run in flight."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def _summary(record: dict[str, Any]) -> str:
    """Returns a one-line account of a finished run for the console."""
    if record["status"] != "ok":
        return f"FAILED {record['error']}"
    method = record["method_report"]
    parts = [f"final {record['final_accuracy']:.4f}"]
    for key, short in (("accuracy_after_removal", "removal"), ("accuracy_after_last_prune", "last prune")):
        if method.get(key) is not None:
            parts.append(f"{short} {method[key]:.4f}")
    return ", ".join(parts)


def execute(specs: Sequence[RunSpec], setup: Setup, *, dry_run: bool = False) -> None:
    """Runs the specs not yet recorded, `setup.workers` at a time, appending each record to the JSONL.
    Prints the plan with its estimated wall time first."""
    done = {r["run_id"] for r in successful(read_jsonl(setup.jsonl))}
    todo = [s for s in specs if s.run_id not in done]
    estimate = wall_seconds((s.estimate_s for s in todo), setup.workers)
    print(f"[{setup.bench}] {len(specs)} runs planned, {len(specs) - len(todo)} already in {setup.jsonl}; "
          f"{len(todo)} to run on {setup.workers} worker(s): estimated {estimate / 60:.1f} min", flush=True)
    if dry_run or not todo:
        return
    # Every worker runs one torch thread; the env vars also cover OpenMP pools started before that call.
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold torch threads
    with ProcessPoolExecutor(max_workers=setup.workers, mp_context=context) as pool:
        futures: dict[Future[dict[str, Any]], RunSpec] = {
            pool.submit(_compress_one, s, setup.dataset, setup.run_dir(s.run_id), setup.device): s
            for s in todo
        }
        try:
            for n, future in enumerate(as_completed(futures), start=1):
                record = future.result()
                _append(setup.jsonl, record)
                elapsed = time.perf_counter() - started
                print(f"[{setup.bench}] {n}/{len(todo)} {record['run_id']} {record['wall_s']:.0f}s: "
                      f"{_summary(record)} (elapsed {elapsed / 60:.1f} min)", flush=True)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
