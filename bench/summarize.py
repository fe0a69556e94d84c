"""Turns the benchmarks' JSONL files into their markdown tables, the headline comparisons and the plot,
and refreshes the generated sections of RESULTS.md (the hand-written reading is left alone).

    python -m bench.summarize                              # bench/results -> bench/RESULTS.md + PNG
    python -m bench.summarize --results-dir bench/results/quick   # -> bench/results/quick/RESULTS.md + PNG
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import inference_payoff, step_overhead, tpp_table1, weightmom_vs_magnitude
from bench.cli import BENCH_DIR
from bench.plot import load, plot
from bench.runner import read_jsonl, successful
from bench.tables import by_scale, markdown, mean_std, pct

__all__ = ["headline", "headlines", "main", "replace_section"]

Record = dict[str, Any]
TEMPLATE = BENCH_DIR / "RESULTS.md"
# The Table-1 questions on final accuracy, per ratio and LR: (question, (label, arm) A, (label, arm) B).
TABLE1_FINAL_COMPARISONS: tuple[tuple[str, tuple[str, str], tuple[str, str]], ...] = (
    ("TPP beats budget-matched L1 (final)", ("TPP", "tpp"), ("L1 + matched", "l1_matched")),
    ("TPP beats budget-matched L1 (final)", ("TPP adaptive", "tpp_adaptive"), ("L1 + matched", "l1_matched")),
    ("Distillation helps L1 (final)", ("L1 + KD", "l1_distill"), ("L1", "l1")),
    ("Distillation helps TPP (final)", ("TPP adaptive + KD", "tpp_distill"),
     ("TPP adaptive", "tpp_adaptive")),
    ("With KD, TPP beats L1 (final)", ("TPP adaptive + KD", "tpp_distill"), ("L1 + KD", "l1_distill")),
    ("Adaptive TPP vs the authors' schedule (final)", ("TPP adaptive", "tpp_adaptive"),
     ("TPP authors'", "tpp")),
    ("The Gram term helps (final)", ("TPP adaptive", "tpp_adaptive"), ("w/o Gram", "tpp_nogram")),
    ("KD α 0.9 beats α 0.5, L1 (final)", ("L1 + KD α 0.9", "l1_distill_a09"), ("L1 + KD", "l1_distill")),
    ("KD α 0.9 beats α 0.5, TPP (final)", ("TPP adaptive + KD α 0.9", "tpp_distill_a09"),
     ("TPP adaptive + KD", "tpp_distill")),
)


def _difference(a: Sequence[float], b: Sequence[float]) -> str:
    """Returns `Δ ± SE` in points for mean(a) - mean(b) (standard error of a difference of two means;
    without it when a side has a single run, which gives no spread to estimate)."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    if min(len(a), len(b)) < 2:
        return f"{100 * (ma - mb):+.2f}"
    se = math.sqrt(sa**2 / len(a) + sb**2 / len(b))
    return f"{100 * (ma - mb):+.2f} ± {100 * se:.2f}"


def _compare(rows: list[list[str]], question: str, setting: str, a: tuple[str, Sequence[float]],
             b: tuple[str, Sequence[float]]) -> None:
    """Appends one comparison row when both sides have runs."""
    if a[1] and b[1]:
        rows.append([question, setting, f"{a[0]} {pct(a[1])}", f"{b[0]} {pct(b[1])}", _difference(a[1], b[1]),
                     f"{len(a[1])} / {len(b[1])}"])


def headline(table1: Sequence[Record], weightmom: Sequence[Record]) -> str:
    """Renders the comparisons the issue asks about: TPP against L1 right after removal and against
    budget-matched L1 at the end; what distillation adds to every method; TPP + KD against L1 + KD; WeightMom
    against magnitude at every sparsity."""
    rows: list[list[str]] = []

    def values(runs: Sequence[Record], arm: str, get: Callable[[Record], Any], **where: Any) -> list[float]:
        """Returns get(record) over the runs of `arm` matching `where` (missing values dropped)."""
        got = [get(r) for r in runs if r["arm"] == arm and all(r[k] == v for k, v in where.items())]
        return [float(v) for v in got if v is not None]

    removal: Callable[[Record], Any] = lambda r: r["method_report"].get("accuracy_after_removal")  # noqa: E731
    final: Callable[[Record], Any] = lambda r: r["final_accuracy"]  # noqa: E731
    for pr in sorted({r["pr"] for r in table1}, reverse=True):
        for arm, label in (("tpp", "TPP authors'"), ("tpp_adaptive", "TPP adaptive")):
            _compare(rows, "TPP keeps more right after removal", f"PR {pr:g}",
                     (label, values(table1, arm, removal, pr=pr)),
                     ("L1", values(table1, "l1", removal, pr=pr)))
        for lr in sorted({r["lr"] for r in table1}, reverse=True):
            setting = f"PR {pr:g}, LR {lr:g}"
            for question, (label_a, arm_a), (label_b, arm_b) in TABLE1_FINAL_COMPARISONS:
                _compare(rows, question, setting, (label_a, values(table1, arm_a, final, pr=pr, lr=lr)),
                         (label_b, values(table1, arm_b, final, pr=pr, lr=lr)))
    mag = weightmom_vs_magnitude.MAGNITUDE
    for sparsity in sorted({r["sparsity"] for r in weightmom}):
        setting = f"sparsity {sparsity:g}"
        for suffix in ("", "_distill"):
            arms = {r["arm"] for r in weightmom if r["arm"].endswith("_distill") == bool(suffix)}
            for arm in sorted(arms - {mag + suffix}, reverse=True):
                label = weightmom_vs_magnitude.arm_label(arm)
                _compare(rows, "WeightMom beats magnitude (final)", setting,
                         (label, values(weightmom, arm, final, sparsity=sparsity)),
                         (weightmom_vs_magnitude.arm_label(mag + suffix),
                          values(weightmom, mag + suffix, final, sparsity=sparsity)))
        for arm in sorted({r["arm"] for r in weightmom if not r["arm"].endswith("_distill")}):
            _compare(rows, "Distillation helps (final)", setting,
                     (weightmom_vs_magnitude.arm_label(arm + "_distill"),
                      values(weightmom, arm + "_distill", final, sparsity=sparsity)),
                     (weightmom_vs_magnitude.arm_label(arm),
                      values(weightmom, arm, final, sparsity=sparsity)))
    if not rows:
        return "_No two arms to compare at this scale (its runs are in the tables below)._\n"
    return ("Accuracy in % (mean ± std over seeds); Δ in points with the standard error of the difference. "
            "With a handful of seeds, a |Δ| below ~2 SE is not a difference this benchmark resolves.\n\n"
            + markdown(["question", "setting", "A", "B", "Δ A − B (pts)", "runs A / B"], rows))


def headlines(table1: Sequence[Record], weightmom: Sequence[Record]) -> str:
    """Renders the headline comparisons of every recorded scale of both benchmarks."""
    parts = [f"Scale `{g[0]['scale']}`:\n\n{headline(g, [])}" for g in by_scale(table1)]
    parts += [f"Scale `{g[0]['scale']}`:\n\n{headline([], g)}" for g in by_scale(weightmom)]
    return "\n".join(parts) or "_No runs recorded yet._\n"


def replace_section(text: str, name: str, body: str) -> str:
    """Replaces what sits between `<!-- begin:name -->` and `<!-- end:name -->` with `body`."""
    pattern = re.compile(rf"(<!-- begin:{name} -->\n).*?(<!-- end:{name} -->)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"RESULTS.md lacks the markers of section {name!r}")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def main(argv: Sequence[str] | None = None) -> None:
    """Renders every table, writes each next to its JSONL, refreshes RESULTS.md and the plot."""
    p = argparse.ArgumentParser(prog="python -m bench.summarize", description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = p.parse_args(argv)
    results: Path = args.results_dir
    default = results.resolve() == (BENCH_DIR / "results").resolve()
    # Results of --quick or elsewhere never touch the committed RESULTS.md and plot.
    results_md = TEMPLATE if default else results / "RESULTS.md"
    png = BENCH_DIR / "accuracy_vs_reduction.png" if default else results / "accuracy_vs_reduction.png"
    table1 = successful(read_jsonl(results / f"{tpp_table1.BENCH}.jsonl"))
    weightmom = successful(read_jsonl(results / f"{weightmom_vs_magnitude.BENCH}.jsonl"))
    sections = {
        "headline": headlines(table1, weightmom),
        tpp_table1.BENCH: tpp_table1.table(table1),
        weightmom_vs_magnitude.BENCH: weightmom_vs_magnitude.table(weightmom),
        inference_payoff.BENCH: inference_payoff.table(inference_payoff.collect(results)),
        step_overhead.BENCH: step_overhead.table(read_jsonl(results / f"{step_overhead.BENCH}.jsonl")),
    }
    text = (results_md if results_md.is_file() else TEMPLATE).read_text()
    for name, body in sections.items():
        if name != "headline":
            (results / f"{name}.md").write_text(body)
        text = replace_section(text, name, body)
    results_md.write_text(text)
    print(f"tables written to {results_md}")
    if plot(*load(results), png):
        print(f"plot written to {png}")


if __name__ == "__main__":
    main()
