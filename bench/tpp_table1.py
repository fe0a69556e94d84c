"""TPP's Table 1 at reduced scale: L1, budget-matched L1, TPP and TPP without the Gram term, on the
pretrained CIFAR-10 ResNet, across layerwise pruning ratios, finetune learning rates and seeds.

    python -m bench.tpp_table1 [--quick] [--arch resnet20] [--train-subset 2048] [--epochs 4] ...

Every run is one pipeline.compress call; the numbers come from its report.json: accuracy right after
removal and after the first finetune epoch (report.method), final accuracy (report.pruned) and the FLOPs
reduction (report.target.achieved, Conv+Linear MACs). Writes bench/results/tpp_table1.{jsonl,md}.
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

__all__ = ["ARMS", "BENCH", "PAPER_TABLE1", "Arm", "main", "plan", "table"]

BENCH = "tpp_table1"
TPP_EXTRA_EVALS = 4  # before and after regularization, right before and right after removal
L1_EXTRA_EVALS = 1  # right after removal


@dataclass(frozen=True)
class Arm:
    """One row family of the table: which method, and how its budget is set."""

    key: str
    label: str
    method: str
    matched: bool = False  # finetunes TPP's regularization epochs on top (budget-matched L1)
    gram: bool = True  # TPP with the Gram term (paper Eq. 3); False sets gram_weight 0


ARMS = (
    Arm("l1", "L1", "l1"),
    Arm("l1_matched", "L1 + matched FT", "l1", matched=True),
    Arm("tpp", "TPP", "tpp"),
    Arm("tpp_nogram", "TPP w/o Gram", "tpp", gram=False),
)
ARM_BY_KEY = {arm.key: arm for arm in ARMS}

# specs/tpp.md: ResNet-56 on CIFAR-10, full 50k training set, 120 finetune epochs, baseline 93.78%.
PAPER_TABLE1 = """\
| Paper (ResNet-56, full CIFAR-10) | PR 0.5 (1.99×) | PR 0.7 (3.59×) | PR 0.9 (11.41×) | PR 0.95 (19.31×) |
|---|---|---|---|---|
| L1, LR 1e-2 | 93.51 | 92.26 | 86.75 | 83.03 |
| TPP, LR 1e-2 | 93.46 | 92.35 | 89.63 | 85.86 |
| L1, LR 1e-3 | 93.12 | 91.77 | 87.57 | 83.10 |
| TPP, LR 1e-3 | 93.32 | 92.00 | 89.09 | 85.47 |
"""

DEFAULTS: dict[str, Any] = {
    "arch": "resnet20", "train_subset": 2048, "val_subset": 0, "batch_size": 64, "seeds": 3, "workers": 2,
    "epochs": 4, "reg_epochs": 3, "stabilize_epochs": 1, "prs": [0.5, 0.7, 0.9], "lrs": [1e-2, 1e-3],
    "reg_lr": 1e-3, "lambda_max": 1.0,
}
QUICK: dict[str, Any] = {
    "train_subset": 256, "val_subset": 256, "seeds": 1, "epochs": 1, "reg_epochs": 1, "stabilize_epochs": 1,
    "prs": [0.5], "lrs": [1e-2],
}


def parser() -> argparse.ArgumentParser:
    """Builds the argument parser (full-run defaults; --quick swaps in QUICK)."""
    p = argparse.ArgumentParser(prog="python -m bench.tpp_table1", description=__doc__.split("\n\n")[0])
    add_scale_args(p)
    p.add_argument("--epochs", type=int, help="finetune epochs after removal (every arm)")
    p.add_argument("--reg-epochs", type=int, help="TPP: epochs of lambda ramp")
    p.add_argument("--stabilize-epochs", type=int, help="TPP: epochs at lambda_max with the zero-out")
    p.add_argument("--prs", type=float, nargs="+", help="layerwise pruning ratios")
    p.add_argument("--lrs", type=float, nargs="+", help="finetune learning rates")
    p.add_argument("--reg-lr", type=float, help="TPP: constant LR of the regularization phase")
    p.add_argument("--lambda-max", type=float, help="TPP: ceiling of the penalty lambda")
    p.add_argument("--arms", nargs="+", choices=list(ARM_BY_KEY), help="a subset of the arms")
    p.set_defaults(**DEFAULTS, arms=list(ARM_BY_KEY))
    return p


def _spec(args: argparse.Namespace, arm: Arm, pr: float, lr: float, seed: int) -> RunSpec:
    """Plans one run: the arm's JobConfig at this ratio, learning rate and seed."""
    reg_total = args.reg_epochs + args.stabilize_epochs
    epochs = args.epochs + (reg_total if arm.matched else 0)
    options: dict[str, Any] = {}
    if arm.method == "tpp":
        options = {"reg_epochs": args.reg_epochs, "stabilize_epochs": args.stabilize_epochs,
                   "reg_lr": args.reg_lr, "lambda_max": args.lambda_max}
        if not arm.gram:
            options["gram_weight"] = 0.0
    config = {
        "method": arm.method, "architecture": args.arch, "target": {"pruning_ratio": pr},
        "finetune": {"epochs": epochs, "lr": lr, "batch_size": args.batch_size}, "seed": seed,
        "options": options,
    }
    scale = (f"{args.arch}/n{args.train_subset}v{args.val_subset}b{args.batch_size}e{args.epochs}"
             f"r{args.reg_epochs}s{args.stabilize_epochs}rl{args.reg_lr:g}lm{args.lambda_max:g}")
    labels = {
        "bench": BENCH, "scale": scale, "arm": arm.key, "pr": pr, "lr": lr, "seed": seed, "arch": args.arch,
        "finetune_epochs": epochs, "reg_epochs": args.reg_epochs if arm.method == "tpp" else 0,
        "stabilize_epochs": args.stabilize_epochs if arm.method == "tpp" else 0,
        "batch_size": args.batch_size,
    }
    train, val = args.train_subset or 5085, args.val_subset or 1017
    tpp = arm.method == "tpp"
    extra_evals = TPP_EXTRA_EVALS if tpp else L1_EXTRA_EVALS
    estimate = run_seconds(args.arch, train=train, val=val, dense_epochs=reg_total if tpp else 0,
                           pruned_epochs=epochs, pr=pr, extra_evals=extra_evals)
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
    """Describes the scale of the runs, from the reports themselves (a TPP run for its schedule)."""
    plain = next((r for r in records if r["arm"] == "l1"), records[0])
    tpp = next((r for r in records if r["method"] == "tpp"), None)
    steps = tpp["method_report"]["regularization_steps"] if tpp else None
    inputs, env = plain["inputs"], plain["environment"]
    seeds = sorted({len(v) for v in by(records, lambda r: (r["arm"], r["pr"], r["lr"])).values()})
    reg = (f"TPP regularization {tpp['reg_epochs']} + {tpp['stabilize_epochs']} epochs = {steps['ramp']} "
           f"ramp + {steps['stabilize']} stabilization steps ({steps['steps_per_epoch']} steps/epoch), "
           f"reg LR {tpp['method_report']['options']['reg_lr']:g}, lambda_max "
           f"{tpp['method_report']['options']['lambda_max']:g}; budget-matched L1 finetunes "
           f"{tpp['reg_epochs'] + tpp['stabilize_epochs']} epochs more" if tpp and steps else "no TPP runs")
    device = env["device"] + (f" ({env['device_name']})" if env.get("device_name") else "")
    return (f"Scale: {plain['arch']}, {inputs['train_samples']} training / "
            f"{inputs['val_samples']} validation images, batch {plain['batch_size']}, finetune "
            f"{plain['finetune_epochs']} epochs (step LR); "
            f"{reg}. Seeds per cell: {seeds}. Device {device}, {env['threads']} thread(s) per run.")


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
    detail_headers = ["PR", "LR", "Arm", "TPP after reg. ramp", "after removal", "after FT epoch 1", "final",
                      "Δ final vs L1 + matched FT (pts)", "FLOPs ↓", "runs"]
    detail = []
    for pr in prs:
        for lr in lrs:
            matched = [r["final_accuracy"] for r in cells.get(("l1_matched", pr, lr), [])]
            for arm in arms:
                runs = cells.get((arm.key, pr, lr), [])
                if not runs:
                    continue
                finals = [r["final_accuracy"] for r in runs]
                delta = (cell([sum(finals) / len(finals) - sum(matched) / len(matched)], scale=100.0)
                         if matched and arm.key != "l1_matched" else "—")
                detail.append([f"{pr:g}", f"{lr:g}", arm.label,
                               pct([_method(r, "accuracy_after_regularization") for r in runs]),
                               pct([_method(r, "accuracy_after_removal") for r in runs]),
                               pct([_method(r, "accuracy_after_first_finetune_epoch") for r in runs]),
                               pct(finals), delta,
                               cell([r["achieved"]["flops_reduction"] for r in runs], unit="×"),
                               str(len(runs))])
    out += ["**Per phase** (accuracy %, mean ± std): TPP at the end of its lambda ramp (before the "
            "zero-out), right after physical removal, after the first finetune epoch, final.", "",
            markdown(detail_headers, detail)]
    gaps = [abs(b - a) for r in records if r["method"] == "tpp"
            for b, a in [(_method(r, "accuracy_before_removal"), _method(r, "accuracy_after_removal"))]
            if a is not None and b is not None]
    if gaps:
        out.append(f"TPP removal check: max |accuracy before − after removal| over {len(gaps)} runs: "
                   f"{100 * max(gaps):.3f} points (must be ≤ 0.1).\n")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    """Runs (or resumes) the benchmark and writes its markdown table next to the JSONL."""
    run_training_benchmark(BENCH, parser(), QUICK, plan, table, argv)


if __name__ == "__main__":
    main()
