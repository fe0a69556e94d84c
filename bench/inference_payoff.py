"""Does pruning pay at inference? Reuses the reports of the two training benchmarks (no retraining):
for structured runs (tpp_table1) onnxruntime latency dense / pruned at batch 1 and 64 beside the FLOPs
and parameter reductions; for unstructured runs (weightmom_vs_magnitude) the ONNX file size ratios,
raw and zstd-compressed, beside the same latency ratios (which should stay near 1: dense kernels do
not skip zeros).

    python -m bench.inference_payoff [--results-dir bench/results] [--remeasure]

The latencies in report.json were taken by pipeline.compress itself (baseline and pruned alternated,
one thread, median), while the benchmark ran --workers runs side by side. --remeasure times again, in
this quiet single process, one stored model.onnx per (architecture, pruning ratio, arm) against a fresh
export of the dense model. Writes bench/results/inference_payoff.{jsonl,md}.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import tpp_table1, weightmom_vs_magnitude
from bench.cli import BENCH_DIR
from bench.data import weights_file
from bench.runner import read_jsonl, successful
from bench.tables import by, cell, markdown

__all__ = ["BENCH", "derive", "main", "remeasure", "table"]

BENCH = "inference_payoff"
BATCHES = ("b1", "b64")


def _speedups(baseline: dict[str, float], pruned: dict[str, float]) -> dict[str, float]:
    """Returns dense latency / pruned latency per batch size."""
    return {b: baseline[b] / pruned[b] for b in BATCHES}


def derive(results_dir: Path) -> list[dict[str, Any]]:
    """Returns one line per successful training run, computed from the figures its report holds."""
    lines = []
    for source in (tpp_table1.BENCH, weightmom_vs_magnitude.BENCH):
        for r in successful(read_jsonl(results_dir / f"{source}.jsonl")):
            base, pruned = r["baseline"], r["pruned"]
            line = {
                "bench": BENCH, "source": source, "run_id": r["run_id"], "arm": r["arm"], "arch": r["arch"],
                "seed": r["seed"], "pr": r.get("pr"), "sparsity": r.get("sparsity"),
                "latency_source": "report", "latency_ms": {"baseline": base["latency_ms"],
                                                           "pruned": pruned["latency_ms"]},
                "speedup": _speedups(base["latency_ms"], pruned["latency_ms"]),
                "flops_reduction": r["achieved"]["flops_reduction"],
                "params_reduction": r["achieved"]["params_reduction"],
                "compression_ratio": r["achieved"]["compression_ratio"],
                "sparsity_reached": r["achieved"]["sparsity"],
                "onnx_bytes_ratio": base["onnx_bytes"] / pruned["onnx_bytes"],
                "zstd_ratio": base["onnx_zstd_bytes"] / pruned["onnx_zstd_bytes"],
                "onnx_path": str(Path(r["report_path"]).with_name("model.onnx")),
            }
            lines.append(line)
    return lines


def remeasure(lines: Sequence[dict[str, Any]], work: Path, threads: int) -> list[dict[str, Any]]:
    """Times one stored pruned ONNX per (arch, pr, arm) of the structured runs against a fresh dense
    export of the same architecture."""
    import torch

    from workers.compression import model_io
    from workers.compression.export import export_onnx
    from workers.compression.measure import latency_ms

    torch.set_num_threads(threads)
    shape = (3, 32, 32)
    baselines: dict[str, Path] = {}
    out = []
    structured = [x for x in lines if x["source"] == tpp_table1.BENCH and Path(x["onnx_path"]).is_file()]
    for (arch, pr, arm), group in by(structured, lambda x: (x["arch"], x["pr"], x["arm"])).items():
        if arch not in baselines:
            work.mkdir(parents=True, exist_ok=True)
            baselines[arch] = work / f"dense_{arch}.onnx"
            dense = model_io.load_model(weights_file(arch), architecture=arch, input_shape=shape,
                                        num_classes=10)
            export_onnx(dense.module.eval(), shape, baselines[arch])
        first = group[0]
        timed = latency_ms(baselines[arch], Path(first["onnx_path"]), shape, threads=threads)
        dense_ms, pruned_ms = timed["baseline"], timed["pruned"]
        print(f"[{BENCH}] {arch} PR {pr:g} {arm}: b1 {dense_ms['b1']:.2f} -> {pruned_ms['b1']:.2f} ms, "
              f"b64 {dense_ms['b64']:.1f} -> {pruned_ms['b64']:.1f} ms", flush=True)
        out.append({**first, "latency_source": "remeasured", "threads": threads, "runs": timed["runs"],
                    "latency_ms": {"baseline": dense_ms, "pruned": pruned_ms},
                    "speedup": _speedups(dense_ms, pruned_ms)})
    return out


def _ratio(group: Sequence[dict[str, Any]], key: str) -> str:
    """Returns the mean ± std of a ratio field over a group of lines, as `N×`."""
    return cell([x[key] for x in group], unit="×")


def _speed_cells(group: Sequence[dict[str, Any]]) -> list[str]:
    """Returns dense ms, pruned ms and speedup cells at batch 1 and 64 (mean ± std over the runs)."""
    cells = []
    for b in BATCHES:
        cells += [cell([x["latency_ms"]["baseline"][b] for x in group]),
                  cell([x["latency_ms"]["pruned"][b] for x in group]),
                  cell([x["speedup"][b] for x in group], unit="×")]
    return cells


def table(lines: Sequence[dict[str, Any]]) -> str:
    """Renders the structured and unstructured payoff tables (report latencies, and remeasured ones)."""
    if not lines:
        return "_No runs recorded yet: run bench.tpp_table1 and bench.weightmom_vs_magnitude first._\n"
    latency_heads = [f"{b} {what}" for b in BATCHES for what in ("dense ms", "pruned ms", "speedup")]
    out = []
    for source_tag, title in (("report", "Latency from each run's report.json (runs side by side)"),
                              ("remeasured", "Latency remeasured in one quiet process (--remeasure)")):
        structured = sorted((x for x in lines if x["source"] == tpp_table1.BENCH
                             and x["latency_source"] == source_tag), key=lambda x: (x["arch"], x["pr"]))
        if not structured:
            continue
        groups = by(structured, lambda x: (x["arch"], x["pr"], x["arm"]))
        rows = [[arch, f"{pr:g}", _structured_label(g[0]), _ratio(g, "flops_reduction"),
                 _ratio(g, "params_reduction"), *_speed_cells(g), str(len(g))]
                for (arch, pr, arm), g in groups.items()]
        out += [f"**Structured (filter pruning). {title}.**", "",
                markdown(["arch", "PR", "arm", "FLOPs ↓", "params ↓", *latency_heads, "runs"], rows)]
    unstructured = [x for x in lines if x["source"] == weightmom_vs_magnitude.BENCH]
    if unstructured:
        groups = by(sorted(unstructured, key=lambda x: (x["arch"], x["sparsity"])),
                    lambda x: (x["arch"], x["sparsity"], x["arm"]))
        rows = [[arch, f"{s:g}", weightmom_vs_magnitude.arm_label(arm),
                 cell([x["sparsity_reached"] for x in g], scale=100.0, unit="%"),
                 *(_ratio(g, key) for key in ("compression_ratio", "onnx_bytes_ratio", "zstd_ratio")),
                 *(cell([x["speedup"][b] for x in g], unit="×") for b in BATCHES), str(len(g))]
                for (arch, s, arm), g in groups.items()]
        out += ["**Unstructured (zeros inside dense tensors).** Size ratios are dense / pruned.", "",
                markdown(["arch", "target", "arm", "sparsity reached", "params / nonzeros", "raw ONNX ×",
                          "zstd ONNX ×", "b1 speedup", "b64 speedup", "runs"], rows)]
    return "\n".join(out)


def _remeasured(results_dir: Path) -> list[dict[str, Any]]:
    """Returns the remeasured lines an earlier --remeasure recorded."""
    return [x for x in read_jsonl(results_dir / f"{BENCH}.jsonl") if x.get("latency_source") == "remeasured"]


# Arms of runs taken before issue 12 (TPP's epochs-based schedule; their scale names reg LR and lambda_max):
# the same keys now name other arms.
OLD_ENGINE_LABELS = {"tpp": "TPP (2026-11 epochs schedule)", "tpp_nogram": "TPP w/o Gram (2026-11)",
                     "l1_matched": "L1 + matched FT (2026-11)"}


def _structured_label(line: dict[str, Any]) -> str:
    """Returns the arm's table label; runs of the old TPP engine keep their own names."""
    old = "lm" in line["run_id"].split("/")[1]
    label = tpp_table1.ARM_BY_KEY[line["arm"]].label
    return OLD_ENGINE_LABELS.get(line["arm"], label) if old else label


def collect(results_dir: Path) -> list[dict[str, Any]]:
    """Returns the report-derived lines plus any remeasured lines recorded earlier (for summarize)."""
    return derive(results_dir) + _remeasured(results_dir)


def main(argv: Sequence[str] | None = None) -> None:
    """Derives the payoff lines from the training benchmarks' records and writes them and the tables."""
    p = argparse.ArgumentParser(prog="python -m bench.inference_payoff", description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results",
                   help="where the training benchmarks wrote their JSONL (bench/results/quick: --quick)")
    p.add_argument("--remeasure", action="store_true", help="time stored structured ONNX models again")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for --remeasure")
    args = p.parse_args(argv)
    results: Path = args.results_dir
    lines = derive(results)
    # Derived lines are rebuilt every time; remeasured ones are kept until the next --remeasure.
    if args.remeasure:
        lines += remeasure(lines, results / "runs" / BENCH, args.threads)
    else:
        lines += _remeasured(results)
    (results / f"{BENCH}.jsonl").write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))
    rendered = table(lines)
    (results / f"{BENCH}.md").write_text(rendered)
    print(rendered)


if __name__ == "__main__":
    main()
