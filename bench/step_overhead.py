"""What a method's hooks cost per training step: TPP's regularized step and WeightMom's masked step over a
plain SGD step, same model, same batch, one process, interleaved repetitions, medians.

    python -m bench.step_overhead [--quick] [--arch resnet20] [--batch-size 64] [--reps 40]

Each variant trains its own copy of the pretrained model with its own SGD optimizer on one fixed real
batch, exactly as Trainer.fit runs a step (forward, cross-entropy, backward, hooks.after_backward,
optimizer.step, hooks.after_step). Round r times one step of every variant, in an order rotated by r, so
slow drifts of a shared machine hit all variants alike. Variants:
- plain: no hooks;
- tpp_ramp: TppHooks during the lambda ramp (Gram-term gradient, L2 on pruned filters and BN);
- tpp_stabilize: TppHooks at lambda_max with every group zeroed after each step (the hold phase);
- weightmom: GradualPruningHooks between events at the target sparsity (gradient and weight masks, EMA);
plus the cost of one WeightMom pruning event (global threshold + layer quotas + removal), amortized
over the pruning interval. Writes bench/results/step_overhead.{jsonl,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import weightmom_vs_magnitude
from bench.cli import BENCH_DIR
from bench.data import DATA_DIR, SOURCE, weights_file
from bench.tables import markdown

__all__ = ["BENCH", "main", "table"]

BENCH = "step_overhead"
VARIANTS = ("plain", "tpp_ramp", "tpp_stabilize", "weightmom")
LR = 1e-3  # small: the same batch again and again must not blow the weights up during timing


def parser() -> argparse.ArgumentParser:
    """Builds the argument parser."""
    p = argparse.ArgumentParser(prog="python -m bench.step_overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("resnet20", "resnet56"), default="resnet20")
    p.add_argument("--batch-size", type=int, default=64, help="as in the training benchmarks")
    p.add_argument("--reps", type=int, default=100, help="timed rounds (one step of every variant each)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--pr", type=float, default=0.5, help="TPP layerwise pruning ratio")
    p.add_argument("--sparsity", type=float, default=0.9, help="WeightMom sparsity the masks hold")
    p.add_argument("--interval", type=int, default=0,
                   help="pruning interval for the amortized figure (0: the WeightMom benchmark's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--results-dir", type=Path, help="default bench/results (…/quick with --quick)")
    p.add_argument("--quick", action="store_true", help="a smoke test: 3 rounds, 1 warm-up")
    return p


@dataclass
class Variant:
    """One timed training setup: its model, optimizer and hooks."""

    name: str
    model: Any  # nn.Module
    optimizer: Any  # torch.optim.Optimizer
    hooks: Any  # StepHooks
    step: int = 0


def _build(
    args: argparse.Namespace,
) -> tuple[str, list[Variant], Callable[[Variant], None], Callable[[], float]]:
    """Loads the model and one real batch and builds every variant; returns the device, the variants, the
    step function and a timer of one WeightMom pruning event (median over a 10-event cubic ramp, ms)."""
    import torch
    import torch.nn.functional as F

    from workers.compression import datasets, model_io, zoo
    from workers.compression.config import DataOptions, TppOptions
    from workers.compression.methods.base import StepHooks
    from workers.compression.methods.masks import select_prunable
    from workers.compression.methods.schedule import cubic_sparsity, make_schedule
    from workers.compression.methods.structured import find_groups, importance, select
    from workers.compression.methods.tpp import TppHooks
    from workers.compression.methods.tpp_schedule import make_tpp_schedule
    from workers.compression.methods.unstructured import GradualPruningHooks
    from workers.compression.pipeline import resolve_device

    device = resolve_device(args.device)
    data = datasets.load_dataset(DATA_DIR / SOURCE, DataOptions(), default_norm=zoo.DEFAULT_NORM[args.arch])
    generator = torch.Generator().manual_seed(0)
    x, y = next(data.batches("train", args.batch_size, shuffle=True, generator=generator, device=device))

    def fresh() -> Any:
        """Returns the pretrained model on the device, in train mode."""
        loaded = model_io.load_model(weights_file(args.arch), architecture=args.arch,
                                     input_shape=data.input_shape, num_classes=data.num_classes)
        return loaded.module.to(device).train()

    def sgd(model: Any) -> Any:
        """Returns the trainer's optimizer: SGD, momentum 0.9, weight decay 5e-4."""
        return torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)

    def tpp(stabilize: bool) -> Variant:
        """TPP hooks mid-ramp (lambda > 0, nothing zeroed) or in the hold (lambda_max, all groups zeroed)."""
        model = fresh()
        example = torch.zeros((1, *data.input_shape), device=device)
        structure = find_groups(model, example, coupled=False)
        plans = select(structure, [importance(model, g) for g in structure.groups], args.pr, None)
        # The hold: lambda_max from step 1 on, a group zeroed every step after it (all of them after a few
        # steps). The ramp: a staircase so slow that lambda stays small but nonzero and nothing is zeroed.
        steps = {"schedule": "authors", "scale": 1.0, "update_interval": 1, "stabilize_steps": 10**6}
        options = TppOptions.model_validate(
            {**steps, "reg_granularity": 1.0, "zero_out_interval": 1} if stabilize
            else {**steps, "reg_granularity": 1e-6})
        hooks = TppHooks(model, plans, options, schedule=make_tpp_schedule(options, len(plans)))
        return Variant("tpp_stabilize" if stabilize else "tpp_ramp", model, sgd(model), hooks)

    def weightmom_hooks(model: Any) -> Any:
        """Returns WeightMom hooks (beta 0.99, gamma 1) whose schedule has no event in the timed steps."""
        schedule = make_schedule(total_steps=10**9, t0=0.0, t_end=1.0, interval=10**8,
                                 final_sparsity=args.sparsity)
        return GradualPruningHooks(select_prunable(model, []), schedule=schedule, beta=0.99, gamma=1.0)

    plain = fresh()
    masked = fresh()
    masked_hooks = weightmom_hooks(masked)
    masked_hooks.prune_to(args.sparsity)  # masks at the target: the common step late in the ramp
    variants = [Variant("plain", plain, sgd(plain), StepHooks()), tpp(False), tpp(True),
                Variant("weightmom", masked, sgd(masked), masked_hooks)]

    def sync() -> None:
        """Waits for queued CUDA work, so a timer measures the step and not its launch."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(v: Variant) -> None:
        """One training step as Trainer.fit takes it."""
        v.step += 1
        loss = F.cross_entropy(v.model(x), y)
        v.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        v.hooks.after_backward(v.model, v.step)
        v.optimizer.step()
        v.hooks.after_step(v.model, v.optimizer, v.step)
        sync()

    def event_ms() -> float:
        """Times the 10 events of a cubic ramp to the target on a dense model with momentum state."""
        model = fresh()
        optimizer = sgd(model)
        step(Variant("event", model, optimizer, StepHooks()))  # momentum buffers exist, as in training
        hooks = weightmom_hooks(model)
        times = []
        for k in range(1, 11):
            start = time.perf_counter()
            hooks.prune_to(cubic_sparsity(k, t0=0, t_end=10, final=args.sparsity), optimizer)
            sync()
            times.append((time.perf_counter() - start) * 1000.0)
        return statistics.median(times)

    return str(device), variants, step, event_ms


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Times every variant in interleaved rounds and returns the JSONL record."""
    import torch

    torch.set_num_threads(1)  # as every benchmark run and the service's worker
    device, variants, step, event_ms = _build(args)
    for _ in range(args.warmup):
        for v in variants:
            step(v)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(args.reps):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            start = time.perf_counter()
            step(v)
            times[v.name].append((time.perf_counter() - start) * 1000.0)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    quartiles = {name: statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
                 for name, ts in times.items()}
    event = event_ms()
    interval = args.interval or weightmom_vs_magnitude.resolve_interval(
        argparse.Namespace(**weightmom_vs_magnitude.DEFAULTS), 5085)
    plain = median["plain"]
    return {
        "bench": BENCH, "arch": args.arch, "batch_size": args.batch_size, "reps": args.reps, "pr": args.pr,
        "sparsity": args.sparsity, "device": device,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "median_ms": median, "q1_ms": {k: q[0] for k, q in quartiles.items()},
        "q3_ms": {k: q[2] for k, q in quartiles.items()},
        "ratio": {name: m / plain for name, m in median.items()},
        "prune_event_ms": event, "interval": interval,
        "weightmom_amortized_ratio": (median["weightmom"] + event / interval) / plain,
        "raw_ms": times,
    }


def table(records: Sequence[dict[str, Any]]) -> str:
    """Renders the latest measurement per (arch, batch, device): median ms, IQR and ratio to plain."""
    latest = {(r["arch"], r["batch_size"], r["device"]): r for r in records if r.get("bench") == BENCH}
    if not latest:
        return "_No runs recorded yet._\n"
    out = []
    for (arch, batch, device), r in latest.items():
        rows = [[name, f"{r['median_ms'][name]:.1f}", f"{r['q1_ms'][name]:.1f}–{r['q3_ms'][name]:.1f}",
                 f"{r['ratio'][name]:.3f}"] for name in VARIANTS]
        rows.append([f"weightmom + one event per {r['interval']} steps", "", "",
                     f"{r['weightmom_amortized_ratio']:.3f}"])
        out += [f"{arch}, batch {batch}, {device}, {r['threads']} thread(s), {r['reps']} interleaved rounds; "
                f"TPP at PR {r['pr']:g}, WeightMom masks at sparsity {r['sparsity']:g}; one pruning event "
                f"takes {r['prune_event_ms']:.1f} ms.", "",
                markdown(["step", "median ms", "IQR ms", "× plain"], rows)]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    """Measures, appends the record and writes the markdown table."""
    args = parser().parse_args(argv)
    if args.quick:
        args.reps, args.warmup = 3, 1
    results = args.results_dir or BENCH_DIR / "results" / ("quick" if args.quick else "")
    record = measure(args)
    results.mkdir(parents=True, exist_ok=True)
    jsonl = results / f"{BENCH}.jsonl"
    with jsonl.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    (results / f"{BENCH}.md").write_text(table(records))
    print(table([record]))


if __name__ == "__main__":
    main()
