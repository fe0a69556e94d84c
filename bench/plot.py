"""Accuracy against FLOPs reduction (filter pruning) and against sparsity (unstructured), one line per arm.

    python -m bench.plot [--results-dir bench/results] [--out bench/accuracy_vs_reduction.png]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt

from bench import tpp_table1, weightmom_vs_magnitude
from bench.cli import BENCH_DIR
from bench.runner import read_jsonl, successful
from bench.tables import by, by_scale, mean_std

__all__ = ["main", "plot"]

Record = dict[str, Any]
COLORS = {"l1": "tab:blue", "l1_matched": "tab:cyan", "tpp": "tab:red", "tpp_nogram": "tab:orange",
          "tpp_adaptive": "tab:purple", "l1_distill": "tab:green", "tpp_distill": "tab:pink",
          "l1_distill_a09": "tab:olive", "tpp_distill_a09": "tab:brown", "magnitude": "tab:blue"}
LR_STYLES = ("-", "--", ":", "-.")


def _line(ax: Any, runs: Sequence[Record], x: Callable[[Record], float], y: Callable[[Record], float | None],
          group: Callable[[Record], Any], **style: Any) -> None:
    """Draws mean ± std of y against mean x, one point per group of runs."""
    points = []
    for members in by(runs, group).values():
        ys = [v for v in (y(r) for r in members) if v is not None]
        if ys:
            points.append((mean_std([x(r) for r in members])[0], *mean_std([100.0 * v for v in ys])))
    points.sort()
    if points:
        xs, means, stds = zip(*points, strict=True)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, **style)


def plot(table1: Sequence[Record], weightmom: Sequence[Record], out: Path) -> bool:
    """Writes the figure, one panel per benchmark view that has runs; returns False when none has."""
    panels = [p for p, runs in (("final", table1), ("removal", table1), ("sparsity", weightmom)) if runs]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    lrs = sorted({r["lr"] for r in table1}, reverse=True)
    flops: Callable[[Record], float] = lambda r: float(r["achieved"]["flops_reduction"])  # noqa: E731
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "final":
            for arm in tpp_table1.ARMS:
                for i, lr in enumerate(lrs):
                    runs = [r for r in table1 if r["arm"] == arm.key and r["lr"] == lr]
                    _line(ax, runs, flops, lambda r: r["final_accuracy"], lambda r: r["pr"],
                          color=COLORS[arm.key], linestyle=LR_STYLES[i % 4], label=f"{arm.label}, LR {lr:g}")
            ax.set(title="Filter pruning: final accuracy", xlabel="FLOPs reduction (×)",
                   ylabel="accuracy (%)")
        elif panel == "removal":
            for arm in tpp_table1.ARMS:  # right after removal nothing depends on the finetune LR: pooled
                runs = [r for r in table1 if r["arm"] == arm.key]
                _line(ax, runs, flops, lambda r: r["method_report"].get("accuracy_after_removal"),
                      lambda r: r["pr"], color=COLORS[arm.key], label=arm.label)
            ax.set(title="Filter pruning: right after removal", xlabel="FLOPs reduction (×)",
                   ylabel="accuracy (%)")
        else:
            for j, arm in enumerate(sorted({r["arm"] for r in weightmom})):
                runs = [r for r in weightmom if r["arm"] == arm]
                _line(ax, runs, lambda r: float(r["sparsity"]) * 100.0, lambda r: r["final_accuracy"],
                      lambda r: r["sparsity"], color=COLORS.get(arm, f"C{j + 3}"),
                      label=weightmom_vs_magnitude.arm_label(arm))
            ax.set(title="Unstructured: final accuracy", xlabel="sparsity of prunable weights (%)",
                   ylabel="accuracy (%)")
        if panel != "sparsity":
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def load(results_dir: Path) -> tuple[list[Record], list[Record]]:
    """Returns the successful records of the two training benchmarks, each at its most-run scale."""

    def main_scale(bench: str) -> list[Record]:
        """Returns the records of the scale with the most runs (none when there are none)."""
        groups = by_scale(successful(read_jsonl(results_dir / f"{bench}.jsonl")))
        return groups[0] if groups else []

    return main_scale(tpp_table1.BENCH), main_scale(weightmom_vs_magnitude.BENCH)


def main(argv: Sequence[str] | None = None) -> None:
    """Plots the recorded runs."""
    p = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "accuracy_vs_reduction.png")
    args = p.parse_args(argv)
    if plot(*load(args.results_dir), args.out):
        print(f"plot written to {args.out}")
    else:
        print(f"no runs in {args.results_dir}: nothing to plot")


if __name__ == "__main__":
    main()
