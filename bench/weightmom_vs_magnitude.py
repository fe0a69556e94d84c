"""WeightMom against its baseline `magnitude` at equal sparsity and equal training steps, on the pretrained
CIFAR-10 ResNet, over seeds, with and without distillation (specs/weightmom.md, "The experiment that decides
the defaults").

    python -m bench.weightmom_vs_magnitude [--quick] [--sparsities 0.9 0.95 0.98] [--gammas 1 0.5] ...

Every arm trains the same number of steps with the engine's fixed schedule: a cubic ramp from step 0 that
closes at the first LR drop (50% of the run), pruning every `interval` steps, masks frozen after. WeightMom's
beta is the spec's 1 - 1/interval as the engine resolves it (pass --beta to override), gamma as given.
Writes bench/results/weightmom_vs_magnitude.*.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

from bench.budget import run_seconds
from bench.cli import add_scale_args, run_training_benchmark
from bench.runner import RunSpec
from bench.tables import by, by_scale, cell, markdown, mean_std, pct
from workers.compression.methods.schedule import make_schedule

__all__ = ["BENCH", "arm_label", "main", "plan", "resolve_interval", "table"]

BENCH = "weightmom_vs_magnitude"
MAGNITUDE = "magnitude"
DISTILL = {"alpha": 0.5, "temperature": 4.0}

DEFAULTS: dict[str, Any] = {
    "arch": "resnet20", "train_subset": 0, "val_subset": 0, "batch_size": 64, "seeds": 3, "workers": 2,
    "epochs": 30, "lr": 1e-2, "sparsities": [0.9, 0.95, 0.98], "gammas": [1.0], "beta": None,
    "interval": 100, "distill": ["off", "on"],
}
QUICK: dict[str, Any] = {"train_subset": 256, "val_subset": 256, "seeds": 1, "epochs": 2, "sparsities": [0.9],
                         "distill": ["off"]}


def parser() -> argparse.ArgumentParser:
    """Builds the argument parser (full-run defaults; --quick swaps in QUICK)."""
    p = argparse.ArgumentParser(prog="python -m bench.weightmom_vs_magnitude",
                                description=__doc__.split("\n\n")[0])
    add_scale_args(p)
    p.add_argument("--epochs", type=int, help="training epochs of every arm (pruning ramp + frozen tail)")
    p.add_argument("--lr", type=float, help="finetune learning rate (step schedule)")
    p.add_argument("--sparsities", type=float, nargs="+", help="target sparsities of the prunable weights")
    p.add_argument("--gammas", type=float, nargs="+", help="WeightMom arms: layer-quota exponents")
    p.add_argument("--beta", type=float, help="WeightMom: EMA of |w| factor (default 1 - 1/interval)")
    p.add_argument("--interval", type=int, help="requested steps between pruning events (the engine shrinks "
                   "it to give at least 10 events)")
    p.add_argument("--distill", nargs="+", choices=["off", "on"], help="arms without / with distillation")
    p.set_defaults(**DEFAULTS)
    return p


def resolve_interval(args: argparse.Namespace, train: int) -> int:
    """Returns the pruning interval the engine will use for every arm (the window ends at the LR drop)."""
    total = math.ceil(args.epochs * math.ceil(train / args.batch_size))
    t_end = math.floor(total * 0.5) / total
    return make_schedule(total_steps=total, t0=0.0, t_end=t_end, interval=args.interval,
                         final_sparsity=0.5).interval


def plan(args: argparse.Namespace) -> list[RunSpec]:
    """Lists every run, seed by seed: magnitude and one WeightMom arm per gamma at every sparsity, each
    without and with distillation."""
    train, val = args.train_subset or 5085, args.val_subset or 1017
    interval = resolve_interval(args, train)
    beta = {} if args.beta is None else {"beta": args.beta}
    arms: list[tuple[str, str, dict[str, Any]]] = [(MAGNITUDE, "magnitude", {"interval": args.interval})]
    arms += [(f"weightmom_g{g:g}", "weightmom", {"interval": args.interval, "gamma": g, **beta})
             for g in args.gammas]
    scale = (f"{args.arch}/n{args.train_subset}v{args.val_subset}b{args.batch_size}e{args.epochs}"
             f"lr{args.lr:g}i{interval}lrdrop")
    specs = []
    for seed in range(args.seeds):
        for sparsity in args.sparsities:
            for distill in args.distill:
                for arm, method, options in arms:
                    key = arm + ("_distill" if distill == "on" else "")
                    config = {
                        "method": method, "architecture": args.arch, "target": {"sparsity": sparsity},
                        "finetune": {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                                     "distill": DISTILL if distill == "on" else False},
                        "seed": seed, "options": options,
                    }
                    labels = {"bench": BENCH, "scale": scale, "arm": key, "sparsity": sparsity, "seed": seed,
                              "arch": args.arch, "epochs": args.epochs, "lr": args.lr,
                              "batch_size": args.batch_size, "distill": distill == "on"}
                    epochs = args.epochs * (4 / 3 if distill == "on" else 1.0)  # a teacher forward per step
                    estimate = run_seconds(args.arch, train=train, val=val, dense_epochs=epochs)
                    arm_id = key if args.beta is None else f"{key}b{args.beta:g}"
                    specs.append(RunSpec(f"{scale}/{arm_id}/s{sparsity:g}/seed{seed}", args.arch, config,
                                         labels, estimate))
    return specs


def arm_label(arm: str) -> str:
    """Returns the table label of an arm key."""
    base, distilled = arm.removesuffix("_distill"), arm.endswith("_distill")
    label = "magnitude (β 0, γ 1)" if base == MAGNITUDE else f"WeightMom γ {base.removeprefix('weightmom_g')}"
    return label + (" + distillation" if distilled else "")


def _scale_line(records: Sequence[dict[str, Any]]) -> str:
    """Describes the runs' scale and schedule, from their reports."""
    first = records[0]
    m, inputs, env = first["method_report"], first["inputs"], first["environment"]
    betas = sorted({r["method_report"]["beta"] for r in records if r["method"] == "weightmom"})
    seeds = sorted({len(v) for v in by(records, lambda r: (r["arm"], r["sparsity"])).values()})
    return (f"Scale: {first['arch']}, {inputs['train_samples']} training / "
            f"{inputs['val_samples']} validation images, batch {first['batch_size']}, {first['epochs']} "
            f"epochs = {m['total_steps']} steps at LR "
            f"{first['lr']:g} (step schedule) for every arm; cubic ramp from step {m['t0_step']} to "
            f"{m['t_end_step']}, pruning every {m['interval']} steps ({m['pruning_events']} events), masks "
            f"frozen after; WeightMom beta {betas}. Seeds per cell: {seeds}. Device {env['device']}, "
            f"{env['threads']} thread(s) per run.")


def _zstd_ratio(record: dict[str, Any]) -> float:
    """Returns dense zstd bytes / pruned zstd bytes of the ONNX file."""
    return float(record["baseline"]["onnx_zstd_bytes"]) / float(record["pruned"]["onnx_zstd_bytes"])


def table(records: Sequence[dict[str, Any]]) -> str:
    """Renders the comparison for every recorded scale (the most runs first)."""
    groups = by_scale(r for r in records if r.get("bench") == BENCH)
    return "\n".join(_scale_table(g) for g in groups) if groups else "_No runs recorded yet._\n"


def _scale_table(records: Sequence[dict[str, Any]]) -> str:
    """Renders final accuracy (mean ± std), the accuracy right after the last pruning event, the difference
    to magnitude, and the achieved sparsity and compression per sparsity and arm, for one scale."""
    cells = by(records, lambda r: (r["sparsity"], r["arm"]))
    arms = [MAGNITUDE, *sorted({r["arm"] for r in records} - {MAGNITUDE}, reverse=True)]
    headers = ["Sparsity", "Arm", "after last prune", "final", "Δ final vs magnitude (pts)",
               "sparsity reached (%)", "params / nonzeros", "zstd ONNX ×", "runs"]
    rows = []
    for sparsity in sorted({r["sparsity"] for r in records}):
        base = [r["final_accuracy"] for r in cells.get((sparsity, MAGNITUDE), [])]
        for arm in arms:
            runs = cells.get((sparsity, arm), [])
            if not runs:
                continue
            finals = [r["final_accuracy"] for r in runs]
            delta = (cell([mean_std(finals)[0] - mean_std(base)[0]], scale=100.0)
                     if base and arm != MAGNITUDE else "—")
            after_last_prune = [r["method_report"]["accuracy_after_last_prune"] for r in runs]
            rows.append([f"{sparsity:g}", arm_label(arm), pct(after_last_prune), pct(finals), delta,
                         pct([r["method_report"]["sparsity_prunable"] for r in runs]),
                         cell([r["method_report"]["compression_ratio"] for r in runs], unit="×"),
                         cell([_zstd_ratio(r) for r in runs], unit="×"), str(len(runs))])
    return "\n".join([
        _scale_line(records), "",
        f"Dense baseline: {pct([records[0]['baseline_accuracy']])}% on the validation split.", "",
        "Accuracy in %, mean ± std over seeds; sparsity over prunable (Conv/Linear) weights.", "",
        markdown(headers, rows),
    ])


def main(argv: Sequence[str] | None = None) -> None:
    """Runs (or resumes) the benchmark and writes its markdown table next to the JSONL."""
    run_training_benchmark(BENCH, parser(), QUICK, plan, table, argv)


if __name__ == "__main__":
    main()
