"""TPP's Table 1 at reduced scale: L1, budget-matched L1, TPP on the authors' schedule (scaled), TPP adaptive,
and L1 / TPP with distillation, on the pretrained CIFAR-10 ResNet, over pruning ratios and seeds.

    python -m bench.tpp_table1 [--quick] [--arch resnet20] [--prs 0.9 0.5] [--epochs 30] [--scale 0.02] ...

Every run is one pipeline.compress call; the numbers come from its report.json: accuracy at the end of the
TPP ramp, right after the zero-out (their difference is the zero-out cost), right after removal, after the
first finetune epoch (report.method), final accuracy (report.pruned) and the FLOPs reduction
(report.target.achieved, Conv+Linear MACs). The budget-matched L1 trains, after removal, as many steps at
constant LR 1e-3 as TPP's scaled authors' schedule regularizes (adaptive TPP stops earlier, so it never gets
more), then the same finetune. Writes bench/results/tpp_table1.{jsonl,md}.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.budget import run_seconds
from bench.cli import add_scale_args, run_training_benchmark
from bench.runner import RunSpec
from bench.tables import by, by_scale, cell, markdown, mean_std, pct
from workers.compression.config import TppOptions
from workers.compression.methods.tpp_schedule import make_tpp_schedule

__all__ = ["ARMS", "BENCH", "PAPER_TABLE1", "Arm", "authors_steps", "main", "plan", "table"]

BENCH = "tpp_table1"
TPP_EXTRA_EVALS = 5  # before and after regularization, after the zero-out, before and after removal
L1_EXTRA_EVALS = 1  # right after removal
TEMPERATURE = 4.0


@dataclass(frozen=True)
class Arm:
    """One row family of the table: which method, its TPP schedule, its budget and distillation."""

    key: str
    label: str
    method: str
    matched: bool = False  # L1 trains TPP's (authors' scaled) regularization steps after removal
    schedule: str = "adaptive"  # TPP: "authors" (scaled) or "adaptive"
    gram: bool = True  # TPP with the Gram term (paper Eq. 3); False sets gram_weight 0
    distill: bool = False
    alpha: float = 0.5  # with distill: the KL term's weight (the product's default 0.5, or the 0.9 arms)
    extra: bool = False  # outside the protocol: run only when named in --arms


ARMS = (
    Arm("l1", "L1", "l1"),
    Arm("l1_matched", "L1 + matched steps", "l1", matched=True),
    Arm("tpp", "TPP (authors' schedule, scaled)", "tpp", schedule="authors"),
    Arm("tpp_adaptive", "TPP adaptive", "tpp"),
    Arm("l1_distill", "L1 + distillation", "l1", distill=True),
    Arm("tpp_distill", "TPP adaptive + distillation", "tpp", distill=True),
    Arm("tpp_nogram", "TPP adaptive w/o Gram", "tpp", gram=False, extra=True),
    Arm("l1_distill_a09", "L1 + distillation α 0.9", "l1", distill=True, alpha=0.9, extra=True),
    Arm("tpp_distill_a09", "TPP adaptive + distillation α 0.9", "tpp", distill=True, alpha=0.9, extra=True),
)
ARM_BY_KEY = {arm.key: arm for arm in ARMS}
DEFAULT_ARMS = [arm.key for arm in ARMS if not arm.extra]

# specs/tpp.md: ResNet-56 on CIFAR-10, full 50k training set, 120 finetune epochs, baseline 93.78%.
PAPER_TABLE1 = """\
| Paper (ResNet-56, full CIFAR-10) | PR 0.5 (1.99×) | PR 0.7 (3.59×) | PR 0.9 (11.41×) | PR 0.95 (19.31×) |
|---|---|---|---|---|
| L1, LR 1e-2 | 93.51 | 92.26 | 86.75 | 83.03 |
| TPP, LR 1e-2 | 93.46 | 92.35 | 89.63 | 85.86 |
| L1, LR 1e-3 | 93.12 | 91.77 | 87.57 | 83.10 |
| TPP, LR 1e-3 | 93.32 | 92.00 | 89.09 | 85.47 |
"""

# The CPU protocol: the whole CIFAR-10 subset, PR 0.9 and 0.5, finetune LR 0.01 for 30 epochs,
# 3 paired seeds; TPP's schedule scaled by 0.02 (tpp_schedule.py).
DEFAULTS: dict[str, Any] = {
    "arch": "resnet20", "train_subset": 0, "val_subset": 0, "batch_size": 64, "seeds": 3, "workers": 2,
    "epochs": 30, "prs": [0.9, 0.5], "lrs": [1e-2], "scale": 0.02,
}
QUICK: dict[str, Any] = {
    "train_subset": 256, "val_subset": 256, "seeds": 1, "epochs": 1, "prs": [0.5], "lrs": [1e-2],
    "scale": 0.0005,
}


def parser() -> argparse.ArgumentParser:
    """Builds the argument parser (full-run defaults; --quick swaps in QUICK)."""
    p = argparse.ArgumentParser(prog="python -m bench.tpp_table1", description=__doc__.split("\n\n")[0])
    add_scale_args(p)
    p.add_argument("--epochs", type=int, help="finetune epochs after removal (every arm)")
    p.add_argument("--scale", type=float, help="TPP: multiplies the authors' step counts (options.scale)")
    p.add_argument("--prs", type=float, nargs="+", help="layerwise pruning ratios")
    p.add_argument("--lrs", type=float, nargs="+", help="finetune learning rates")
    p.add_argument("--arms", nargs="+", choices=list(ARM_BY_KEY), help="a subset of the arms")
    p.set_defaults(**DEFAULTS, arms=DEFAULT_ARMS)
    return p


def authors_steps(scale: float) -> int:
    """Returns the regularization steps of TPP's authors' schedule at `scale` (ramp + hold; the hold does not
    depend on the group count unless it is too short for one zero-out pass)."""
    return make_tpp_schedule(TppOptions(schedule="authors", scale=scale), groups=1).max_steps


def _spec(args: argparse.Namespace, arm: Arm, pr: float, lr: float, seed: int) -> RunSpec:
    """Plans one run: the arm's JobConfig at this ratio, learning rate and seed."""
    options: dict[str, Any] = {}
    reg_steps = authors_steps(args.scale)
    if arm.method == "tpp":
        options = {"schedule": arm.schedule, "scale": args.scale}
        if not arm.gram:
            options["gram_weight"] = 0.0
    elif arm.matched:
        options = {"extra_steps": reg_steps, "extra_lr": 1e-3}
    config = {
        "method": arm.method, "architecture": args.arch, "target": {"pruning_ratio": pr},
        "finetune": {"epochs": args.epochs, "lr": lr, "batch_size": args.batch_size,
                     "distill": {"alpha": arm.alpha, "temperature": TEMPERATURE} if arm.distill else False},
        "seed": seed, "options": options,
    }
    scale = (f"{args.arch}/n{args.train_subset}v{args.val_subset}b{args.batch_size}e{args.epochs}"
             f"sc{args.scale:g}")
    labels = {
        "bench": BENCH, "scale": scale, "arm": arm.key, "pr": pr, "lr": lr, "seed": seed, "arch": args.arch,
        "finetune_epochs": args.epochs, "batch_size": args.batch_size, "tpp_scale": args.scale,
        "distill": arm.distill,
    }
    train, val = args.train_subset or 5085, args.val_subset or 1017
    steps_per_epoch = -(-train // args.batch_size)
    dense_epochs = reg_steps / steps_per_epoch if arm.method == "tpp" or arm.matched else 0.0
    extra_evals = TPP_EXTRA_EVALS if arm.method == "tpp" else L1_EXTRA_EVALS
    # A teacher forward costs about a third of a dense training step.
    pruned_epochs = args.epochs + (args.epochs / 3 / 0.6 if arm.distill else 0.0)
    estimate = run_seconds(args.arch, train=train, val=val, dense_epochs=dense_epochs,
                           pruned_epochs=pruned_epochs, pr=pr, extra_evals=extra_evals)
    return RunSpec(f"{scale}/{arm.key}/pr{pr:g}/lr{lr:g}/seed{seed}", args.arch, config, labels, estimate)


def plan(args: argparse.Namespace) -> list[RunSpec]:
    """Lists every run, seed by seed, so an interrupted benchmark still holds whole seeds."""
    arms = [ARM_BY_KEY[key] for key in args.arms]
    return [_spec(args, arm, pr, lr, seed)
            for seed in range(args.seeds) for pr in args.prs for lr in args.lrs for arm in arms]


def _method(record: dict[str, Any], key: str) -> float | None:
    """Returns a number from the run's report.method block (None when the method did not report it)."""
    value = record["method_report"].get(key)
    return None if value is None else float(value)


def _scale_line(records: Sequence[dict[str, Any]]) -> str:
    """Describes the scale of the runs, from the reports themselves (TPP runs for their schedules)."""
    plain = next((r for r in records if r["arm"] == "l1"), records[0])
    inputs, env = plain["inputs"], plain["environment"]
    seeds = sorted({len(v) for v in by(records, lambda r: (r["arm"], r["pr"], r["lr"])).values()})
    schedules = []
    for mode in ("authors", "adaptive"):
        runs = [r for r in records if r["method"] == "tpp" and r["method_report"]["schedule"]["mode"] == mode]
        if runs:
            s = runs[0]["method_report"]["schedule"]
            steps = [r["method_report"]["regularization_steps"] for r in runs]
            schedules.append(f"TPP {mode}: lambda +{s['lambda_increment']:g} every {s['update_interval']} "
                             f"steps, {min(steps)}-{max(steps)} regularization steps, a group zeroed every "
                             f"{s['zero_out_interval']} steps after the ramp")
    matched = next((r for r in records if r["arm"] == "l1_matched"), None)
    if matched:
        schedules.append(f"budget-matched L1: {matched['method_report']['extra_steps']} steps at LR 1e-3 "
                         "after removal")
    device = env["device"] + (f" ({env['device_name']})" if env.get("device_name") else "")
    return (f"Scale: {plain['arch']}, {inputs['train_samples']} training / "
            f"{inputs['val_samples']} validation images, batch {plain['batch_size']}, finetune "
            f"{plain['finetune_epochs']} epochs (step LR); {'; '.join(schedules) or 'no TPP runs'}. "
            f"Seeds per cell: {seeds}. Device {device}, {env['threads']} thread(s) per run.")


def table(records: Sequence[dict[str, Any]]) -> str:
    """Renders the reduced-scale Table 1 of every recorded scale (the most runs first)."""
    groups = by_scale(r for r in records if r.get("bench") == BENCH)
    return "\n".join(_scale_table(g) for g in groups) if groups else "_No runs recorded yet._\n"


def _scale_table(records: Sequence[dict[str, Any]]) -> str:
    """Renders one scale's Table 1 (final accuracy, paper layout), the paper's, and per-phase detail."""
    prs, lrs = sorted({r["pr"] for r in records}), sorted({r["lr"] for r in records}, reverse=True)
    arms = [a for a in ARMS if any(r["arm"] == a.key for r in records)]
    cells = by(records, lambda r: (r["arm"], r["pr"], r["lr"]))
    flops = {pr: cell([mean_std([r["achieved"]["flops_reduction"] for r in records if r["pr"] == pr])[0]],
                      unit="×") for pr in prs}  # the same filters go in every arm: one figure per ratio
    out = [_scale_line(records), "",
           f"Dense baseline: {pct([records[0]['baseline_accuracy']])}% on the validation split.", "",
           "**Final accuracy (%)**, mean ± std over seeds; FLOPs reduction measured on the pruned model.", ""]
    headers = ["Arm, finetune LR", *(f"PR {pr:g} ({flops[pr]})" for pr in prs)]
    rows = [[f"{arm.label}, LR {lr:g}", *(pct([r["final_accuracy"] for r in cells.get((arm.key, pr, lr), [])])
                                           for pr in prs)] for lr in lrs for arm in arms]
    out += [markdown(headers, rows), PAPER_TABLE1]
    detail_headers = ["PR", "LR", "Arm", "after reg. ramp", "after zero-out", "zero-out cost (pts)",
                      "pruned/kept norm", "reg. steps", "after removal", "after FT epoch 1", "final",
                      "Δ final vs L1 + matched (pts)", "runs"]
    detail = []
    for pr in prs:
        for lr in lrs:
            matched = [r["final_accuracy"] for r in cells.get(("l1_matched", pr, lr), [])]
            for arm in arms:
                runs = cells.get((arm.key, pr, lr), [])
                if not runs:
                    continue
                finals = [r["final_accuracy"] for r in runs]
                delta = (cell([mean_std(finals)[0] - mean_std(matched)[0]], scale=100.0)
                         if matched and arm.key != "l1_matched" else "—")
                detail.append([f"{pr:g}", f"{lr:g}", arm.label,
                               pct([_method(r, "accuracy_after_regularization") for r in runs]),
                               pct([_method(r, "accuracy_after_zero_out") for r in runs]),
                               pct([_method(r, "zero_out_cost") for r in runs]),
                               cell([_method(r, "norm_ratio_at_zero_out") for r in runs], digits=5),
                               cell([_method(r, "regularization_steps") for r in runs], digits=0),
                               pct([_method(r, "accuracy_after_removal") for r in runs]),
                               pct([_method(r, "accuracy_after_first_finetune_epoch") for r in runs]),
                               pct(finals), delta, str(len(runs))])
    out += ["**Per phase** (accuracy %, mean ± std): TPP at the end of its lambda ramp, right after the last "
            "group was zeroed (the zero-out cost is the difference), the largest pruned/kept norm ratio at "
            "the zero-out, then every arm right after physical removal, after the first finetune epoch, "
            "final.",
            "", markdown(detail_headers, detail)]
    costs = [c for r in records if r["method"] == "tpp"
             for c in [_method(r, "zero_out_cost")] if c is not None]
    if costs:
        out.append(f"TPP zero-out cost: at most {100 * max(costs):.2f} points over {len(costs)} runs "
                   "(the product warns above 1 point).\n")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    """Runs (or resumes) the benchmark and writes its markdown table next to the JSONL."""
    run_training_benchmark(BENCH, parser(), QUICK, plan, table, argv)


if __name__ == "__main__":
    main()
