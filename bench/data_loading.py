"""Streaming image datasets: does the loader keep up with training, and does memory stay flat as the
archive grows?

    python -m bench.data_loading throughput [--gigabytes 0.2] [--steps 12] [--batch-size 32]
    python -m bench.data_loading rss [--gigabytes 2 20] [--archives ZIP...] [--steps 30] [--tmp DIR]

Archives are generated: an ImageNet-style stored ZIP (`train/<class>/<n>.jpg`, 10 classes, no val/) of
photo-like JPEGs of ImageNet's typical size (~500x375, ~65 KB), drawn from a pool of distinct images
(their content does not matter to the loader; their bytes and count do).
- throughput: a 224-px torchvision ResNet-18 job's data path on this machine: the loader alone (decode,
  RandomResizedCrop, flip, normalize; images/s), then Trainer.fit for `--steps` steps, whose per-epoch
  report gives training images/s and the data-wait share (step time spent waiting for the next batch).
- rss: per archive size, a fresh process indexes the archive and trains `--steps` steps at 64 px (then
  evaluates the whole validation split); its peak RSS (ru_maxrss) is the figure. Each archive is deleted
  after its run.
Writes bench/results/data_loading.{jsonl,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.cli import BENCH_DIR
from bench.tables import markdown, record_results

__all__ = ["generate_archive", "main"]

BENCH = "data_loading"
CLASSES = 10
_POOL = 64  # distinct JPEGs the archive repeats


def generate_archive(path: Path, gigabytes: float, seed: int = 0, kind: str = "zip") -> int:
    """Writes an ImageNet-style stored ZIP (or a .tar.gz) of about `gigabytes` GB; returns the image count."""
    pool = _jpeg_pool(seed)
    target, written, n = gigabytes * 1e9, 0, 0
    if kind == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            while written < target:
                zf.writestr(_member_name(n), pool[n % _POOL])
                written, n = written + len(pool[n % _POOL]), n + 1
        return n
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        while written < target:
            data = pool[n % _POOL]
            info = tarfile.TarInfo(_member_name(n))
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
            written, n = written + len(data), n + 1
    return n


def _member_name(n: int) -> str:
    """Returns image n's path: train/<class>/<n>.jpg, classes taking turns."""
    return f"train/class{n % CLASSES:02d}/{n:08d}.jpg"


def _jpeg_pool(seed: int) -> list[bytes]:
    """Returns _POOL distinct photo-like JPEGs of ImageNet's typical size (smooth colour plus grain)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(_POOL):
        w, h = int(rng.integers(400, 600)), int(rng.integers(300, 450))
        coarse = Image.fromarray(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8))
        photo = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        photo = np.clip(photo + rng.integers(-12, 13, photo.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, format="JPEG", quality=90)
        pool.append(buf.getvalue())
    return pool


def _bundle(path: Path, size: int) -> Any:
    """Loads the archive streamed, fed as a torchvision ResNet-18 at `size` px."""
    from workers.compression.config import DataOptions
    from workers.compression.datasets import load_dataset
    from workers.compression.preprocessing import IMAGENET_NORM, Preprocessing

    fit = Preprocessing(size, 0.875, "bilinear", *IMAGENET_NORM, 3, "bench")
    return load_dataset(path, DataOptions(), preprocessing=fit)


def _train(bundle: Any, steps: int, batch_size: int) -> dict[str, Any]:
    """Trains a ResNet-18 for `steps` steps through Trainer.fit; returns its last epoch's report entry."""
    import torch
    import torchvision

    from workers.compression.config import FinetuneConfig
    from workers.compression.training import Trainer

    model = torchvision.models.resnet18(num_classes=CLASSES)
    trainer = Trainer(data=bundle, finetune=FinetuneConfig(batch_size=batch_size), device=torch.device("cpu"),
                      seed=0)
    trainer.fit(model, phase="bench", epochs=steps / trainer.steps_per_epoch, lr=0.01, schedule="constant")
    entry: dict[str, Any] = trainer.history[-1]
    return entry


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Measures the loader alone, then training, on one generated archive."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        path = Path(tmp) / "data.zip"
        images = generate_archive(path, args.gigabytes)
        bundle = _bundle(path, 224)
        started, seen = time.perf_counter(), 0
        for _, y in bundle.batches("train", args.batch_size, shuffle=True, generator=torch.Generator()):
            seen += len(y)
            if seen >= args.steps * args.batch_size:
                break
        loader = seen / (time.perf_counter() - started)
        epoch = _train(bundle, args.steps, args.batch_size)
    return {"bench": "throughput", "images": images, "image_size": 224, "batch_size": args.batch_size,
            "workers": bundle.workers, "threads": torch.get_num_threads(), "loader_images_per_s": loader,
            "train_images_per_s": epoch["images_per_s"], "data_wait_share": epoch["data_wait_share"]}


def rss(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Runs one fresh process per archive (generated per size, or given with --archives) and records its
    peak RSS."""
    records = []
    for path in args.archives:
        records.append(_measure_rss(path, None, args.steps))
    for gigabytes in args.gigabytes:
        with tempfile.TemporaryDirectory(prefix="bench-data-", dir=args.tmp) as tmp:
            path = Path(tmp) / "data.zip"
            records.append(_measure_rss(path, generate_archive(path, gigabytes), args.steps))
    return records


def _measure_rss(path: Path, images: int | None, steps: int) -> dict[str, Any]:
    """Runs rss-child on one archive in a fresh process; returns (and prints) its record."""
    child = subprocess.run([sys.executable, "-m", "bench.data_loading", "rss-child", str(path),
                            "--steps", str(steps)], capture_output=True, text=True, check=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    record = {"bench": "rss", "gigabytes": path.stat().st_size / 1e9, "images": images or result["indexed"],
              **result}
    print(json.dumps(record), flush=True)
    return record


def rss_child(path: Path, steps: int) -> dict[str, Any]:
    """Indexes, trains and evaluates in this process; returns its peak RSS and how long each part took."""
    t = time.perf_counter()
    bundle = _bundle(path, 64)
    indexed = time.perf_counter() - t
    epoch = _train(bundle, steps, 32)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    index = bundle.index
    samples = sum(a.nbytes for a in (*index.train, *index.val))
    return {"peak_rss_mib": peak_kib / 1024, "index_s": indexed, "train_images_per_s": epoch["images_per_s"],
            "val_images": bundle.val_samples, "indexed": bundle.train_samples + bundle.val_samples,
            "steps": steps, "index": "packed",
            "index_bytes_per_image": (index.source.nbytes + samples) / (bundle.train_samples
                                                                         + bundle.val_samples)}


def table(records: Sequence[dict[str, Any]]) -> str:
    """Renders both benchmarks' records as markdown tables."""
    out = []
    for r in (r for r in records if r["bench"] == "throughput"):
        out.append(markdown(
            ["model", "batch", "loader workers", "torch threads", "loader images/s", "training images/s",
             "data-wait share"],
            [["ResNet-18, 224 px", str(r["batch_size"]), str(r["workers"]), str(r["threads"]),
              f"{r['loader_images_per_s']:.1f}", f"{r['train_images_per_s']:.1f}",
              f"{r['data_wait_share']:.1%}"]]))
    sizes = [r for r in records if r["bench"] == "rss"]
    if sizes:
        out.append(markdown(
            ["archive", "images", "index", "index bytes/image", "index s", "peak RSS (MiB)",
             "training images/s (64 px)"],
            [[f"{r['gigabytes']:.1f} GB", str(r["images"]), r.get("index", "zipfile's ZipInfo list (before)"),
              f"{r['index_bytes_per_image']:.0f}" if "index_bytes_per_image" in r else "~900",
              f"{r['index_s']:.1f}", f"{r['peak_rss_mib']:.0f}", f"{r['train_images_per_s']:.1f}"]
             for r in sizes]))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the chosen benchmark and appends its records to bench/results/data_loading.{jsonl,md}."""
    p = argparse.ArgumentParser(prog="python -m bench.data_loading", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--gigabytes", type=float, default=0.2)
    t.add_argument("--steps", type=int, default=12)
    t.add_argument("--batch-size", type=int, default=32)
    r = sub.add_parser("rss")
    r.add_argument("--gigabytes", type=float, nargs="*", default=[2.0, 20.0])
    r.add_argument("--archives", type=Path, nargs="*", default=[],
                   help="also measure these archives, made before with generate_archive (kept)")
    r.add_argument("--steps", type=int, default=30)
    r.add_argument("--tmp", type=Path, default=None, help="where the archives are generated")
    c = sub.add_parser("rss-child")
    c.add_argument("path", type=Path)
    c.add_argument("--steps", type=int, default=30)
    args = p.parse_args(argv)
    if args.command == "rss-child":
        print(json.dumps(rss_child(args.path, args.steps)))
        return 0
    records = [throughput(args)] if args.command == "throughput" else rss(args)
    record_results(BENCH_DIR / "results", BENCH, records, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
