"""Command-line plumbing shared by the entry points: scale knobs, --quick defaults, where results go."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.data import dataset_file
from bench.runner import RunSpec, Setup, execute, read_jsonl, successful

__all__ = ["BENCH_DIR", "add_scale_args", "parse", "run_training_benchmark", "setup_from"]

BENCH_DIR = Path(__file__).resolve().parent


def add_scale_args(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """Adds the knobs every training benchmark shares; `defaults` sets their full-run values."""
    parser.add_argument("--arch", choices=("resnet20", "resnet56"), help="pretrained model (../shared/data)")
    parser.add_argument("--train-subset", type=int, help="training images (fixed random draw; 0: all)")
    parser.add_argument("--val-subset", type=int, help="validation images (the first N; 0 = all 1017)")
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 per configuration")
    parser.add_argument("--workers", type=int, help="parallel single-threaded processes (one per core)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: CUDA when present)")
    parser.add_argument("--results-dir", type=Path, help="default bench/results (with --quick: …/quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: a few steps, one seed")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time only")
    parser.set_defaults(**defaults)


def parse(
    parser: argparse.ArgumentParser, quick: dict[str, Any], argv: Sequence[str] | None,
) -> argparse.Namespace:
    """Parses `argv`; with --quick the `quick` values replace the defaults (flags given explicitly win)."""
    known, _ = parser.parse_known_args(argv)
    if known.quick:
        parser.set_defaults(**quick, results_dir=BENCH_DIR / "results" / "quick")
    args = parser.parse_args(argv)
    if args.results_dir is None:
        args.results_dir = BENCH_DIR / "results"
    return args


def setup_from(args: argparse.Namespace, bench: str) -> Setup:
    """Builds the run setup (data subset written once under the results folder) from parsed arguments."""
    results: Path = args.results_dir
    dataset = dataset_file(results / "data", train=args.train_subset, val=args.val_subset)
    return Setup(bench=bench, dataset=dataset, results_dir=results, workers=args.workers, device=args.device)


def run_training_benchmark(
    bench: str,
    parser: argparse.ArgumentParser,
    quick: dict[str, Any],
    plan: Callable[[argparse.Namespace], list[RunSpec]],
    table: Callable[[Sequence[dict[str, Any]]], str],
    argv: Sequence[str] | None,
) -> None:
    """Runs (or resumes) a training benchmark's plan and writes the markdown table of every run recorded in
    the JSONL next to it, so that running a few arms never drops the others' rows."""
    args = parse(parser, quick, argv)
    setup = setup_from(args, bench)
    execute(plan(args), setup, dry_run=args.dry_run)
    if not args.dry_run:
        path = setup.results_dir / f"{bench}.md"
        path.write_text(table(successful(read_jsonl(setup.jsonl))))
        print(f"[{bench}] table written to {path}")
