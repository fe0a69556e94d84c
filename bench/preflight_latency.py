"""Pre-flight latency: `POST /preflight` wall time with a waiting pre-imported child vs a cold one.

Starts two real APIs (`secateur serve --no-worker`), one with `SECATEUR_PREFLIGHT_SPARE=true` (the default)
and one with it off, and posts the same pre-flight (l1 at ratio 0.5, no dataset) of the zoo ResNet-56 and
torchvision's ResNet-50 (25.6 M params, random weights, 224 px) to each in turn, `--repeats` times, waiting
between requests until the replacement child has imported. Prints median wall seconds and warm/cold ratios.
Usage: python -m bench.preflight_latency [--repeats 3] [--settle-s 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch
from safetensors.torch import save_file

from bench.service_figures import free_port, wait_ready
from workers.compression import zoo
from workers.compression.architectures import parse_architecture
from workers.compression.library_models import build

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"resnet56": 32, "torchvision/resnet50": 224}  # architecture: input side


def save_random_weights(architecture: str, side: int, folder: Path) -> Path:
    """Random weights of the architecture (10 classes), as the safetensors a user uploads."""
    torch.manual_seed(0)
    if "/" in architecture:
        model = build(parse_architecture(architecture), num_classes=10, image_size=side)
    else:
        model = zoo.build(architecture, num_classes=10, input_shape=(3, side, side))
    path = folder / f"{architecture.replace('/', '_')}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@contextmanager
def api(folder: Path, *, spare: bool) -> Iterator[httpx.Client]:
    """A real API process with the pre-flight spare on or off, until the block ends."""
    port = free_port()
    env = {**os.environ, "SECATEUR_PREFLIGHT_SPARE": str(spare).lower()}
    argv = [sys.executable, "-m", "service.cli", "serve", "--no-worker", "--port", str(port),
            "--data-dir", str(folder / f"data-{spare}")]
    server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            wait_ready(client)
            yield client
    finally:
        server.terminate()
        server.wait(timeout=60)


def preflight_seconds(client: httpx.Client, model: Path, architecture: str) -> float:
    """Wall seconds of one pre-flight; fails loudly on anything but a 200."""
    config = {"method": "l1", "architecture": architecture, "target": {"pruning_ratio": 0.5}}
    started = time.perf_counter()
    with model.open("rb") as f:
        response = client.post("/preflight", files={"model": (model.name, f)},
                               data={"config": json.dumps(config)})
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{architecture}: {response.status_code} {response.text[:300]}")
    return elapsed


def main() -> None:
    """Measures both APIs on both models, interleaved, and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settle-s", type=float, default=20.0, help="wait after each request (child import)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="secateur-preflight-bench-") as tmp:
        folder = Path(tmp)
        models = {arch: save_random_weights(arch, side, folder) for arch, side in MODELS.items()}
        times: dict[tuple[str, bool], list[float]] = {}
        with api(folder, spare=True) as warm, api(folder, spare=False) as cold:
            time.sleep(args.settle_s)
            for _ in range(args.repeats):
                for arch, path in models.items():
                    for spare, client in ((True, warm), (False, cold)):
                        times.setdefault((arch, spare), []).append(preflight_seconds(client, path, arch))
                        time.sleep(args.settle_s)
    print("| model | warm child (default), median s | cold child, median s | warm / cold |")
    print("|---|---|---|---|")
    for arch in MODELS:
        warm_s, cold_s = (statistics.median(times[(arch, spare)]) for spare in (True, False))
        print(f"| {arch} | {warm_s:.1f} | {cold_s:.1f} | {warm_s / cold_s:.2f} |")


if __name__ == "__main__":
    main()
