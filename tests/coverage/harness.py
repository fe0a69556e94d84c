"""Model coverage: every library model, saved the way a user saves it, through the whole chain per method.

For each model: build it with random weights (10 classes, a small input), save it as safetensors for
`torchvision/<name>` / `timm/<name>`, as a checkpoint archive for `hf`, or export it to ONNX; then run
`compress` (load → prune → finetune steps → ONNX export → onnxruntime parity → report) for each method in a
child process with a CPU-time limit, and record pass, FLOPs reduction, sparsity and CPU seconds, or the error
code. CPU time, not wall time: the suite shares its machine, and a busy machine must not fail a model.
No per-model code: the same chain runs for all. `python -m tests.coverage.harness --help` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

__all__ = [
    "HF_MODELS", "TIMM_MODELS", "Case", "Outcome", "all_cases", "pending_cases", "run_cases", "write_table",
]

ROOT = Path(__file__).resolve().parents[2]
CLASSES, SIZE, BATCH = 10, 64, 16
METHODS = ("l1", "tpp", "magnitude", "weightmom")
ONNX_METHODS = ("magnitude", "l1")
JOB_LIMIT_S = 600  # "no job takes over 10 minutes on this CPU", in CPU seconds (one torch thread)
LOAD_ALLOWANCE = 4  # a child's wall-clock limit over its CPU limit: how busy the machine may be
# The smallest input an architecture takes, where 64 px is below it (test input, not model code).
# 70: a multiple of ViT-H's 14-px patch; 224: MaxViT partitions every stage's map into 7x7 windows.
MIN_SIZE = {
    "torchvision/inception_v3": 96,
    "torchvision/vit_h_14": 70,
    "torchvision/maxvit_t": 224,
    "timm/efficientformer_l1": 224,  # its attention bias is sized for a 7x7 last stage
}
# Only the suite's own ONNX upload needs these larger: below 224 px AlexNet's and VGG's adaptive pools would
# upsample to 6x6 / 7x7, which torch's exporter refuses (the engine's export writes such a pool as matmuls,
# so their weights uploads run at 64 px, ~12x cheaper).
ONNX_MIN_SIZE = {
    "torchvision/alexnet": 224,
    **{f"torchvision/vgg{depth}{bn}": 224 for depth in (11, 13, 16, 19) for bn in ("", "_bn")},
}


def min_size(model: str, source: str) -> int:
    """The input side a model is built and fed at as the given source ("weights" or "onnx")."""
    if source == "onnx" and model in ONNX_MIN_SIZE:
        return ONNX_MIN_SIZE[model]
    return MIN_SIZE.get(model, SIZE)


# At least 40 timm models across families: CNNs, mobile nets, re-parameterizable nets, transformers, hybrids.
TIMM_MODELS = (
    "resnet18",
    "resnet50d",
    "resnext26ts",
    "seresnext26d_32x4d",
    "regnetx_002",
    "regnety_002",
    "efficientnet_b0",
    "efficientnet_lite0",
    "mobilenetv2_050",
    "mobilenetv3_small_050",
    "mnasnet_small",
    "ghostnet_100",
    "lcnet_050",
    "tinynet_e",
    "rexnet_100",
    "hardcorenas_a",
    "convnext_atto",
    "convnextv2_atto",
    "repvgg_a0",
    "mobileone_s0",
    "densenet121",
    "dla34",
    "dpn48b",
    "hrnet_w18_small",
    "cspresnet50",
    "xception41",
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "beitv2_base_patch16_224",
    "swin_tiny_patch4_window7_224",
    "mobilevit_xxs",
    "mobilevitv2_050",
    "efficientformer_l1",
    "efficientformerv2_s0",
    "levit_128s",
    "edgenext_xx_small",
    "poolformer_s12",
    "fastvit_t8",
    "pit_ti_224",
    "mixer_s32_224",
    "resmlp_12_224",
    "cait_xxs24_224",
    "coat_lite_tiny",
)
# Small configs of each Hugging Face image-classifier type (the weights a user uploads match them).
_VIT_LIKE = {"image_size": SIZE, "patch_size": 16, "hidden_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "intermediate_size": 128}
HF_MODELS: dict[str, dict[str, Any]] = {
    "vit": _VIT_LIKE,
    "deit": _VIT_LIKE,
    "convnext": {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 2, 1], "image_size": SIZE},
    "swin": {
        "image_size": SIZE,
        "patch_size": 4,
        "embed_dim": 16,
        "depths": [1, 1, 2],
        "num_heads": [2, 2, 4],
        "window_size": 4,
    },
    "resnet": {
        "embedding_size": 16,
        "hidden_sizes": [16, 32, 64, 128],
        "depths": [1, 1, 1, 1],
        "layer_type": "basic",
    },
    "mobilevit": {
        "image_size": SIZE,
        "hidden_sizes": [32, 48, 64],
        "neck_hidden_sizes": [8, 8, 16, 16, 24, 32, 160],
    },
    "efficientnet": {
        "image_size": SIZE,
        "width_coefficient": 1.0,
        "depth_coefficient": 0.5,
        "hidden_dim": 1280,
    },
}


@dataclass(frozen=True)
class Case:
    """One model as a user would upload it: `torchvision/<name>`, `timm/<name>` or `hf/<type>`, as its
    library's weights (safetensors / checkpoint archive) or as an ONNX export."""

    model: str
    source: str  # "weights" or "onnx"
    only: tuple[str, ...] = ()  # a subset of the methods to run (rerunning what a fix changed)

    @property
    def size(self) -> int:
        """The input side the model is built and fed at."""
        return min_size(self.model, self.source)

    @property
    def batch_size(self) -> int:
        """The training batch: 16 at 64 px, fewer for a larger input, so every step costs about the same
        (MaxViT at 224 px spent 10 CPU s per TPP step at 16 and ran past the job limit)."""
        return max(2, round(BATCH * (SIZE / self.size) ** 2))

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods this case is run with."""
        methods = METHODS if self.source == "weights" else ONNX_METHODS
        return tuple(m for m in methods if not self.only or m in self.only)


@dataclass(frozen=True)
class Outcome:
    """One model × method: passed, or the error code; what it reached and how long it took."""

    model: str
    source: str
    method: str
    passed: bool
    code: str  # "ok", an engine error code, "timeout", "crashed" or "internal"
    flops_reduction: float | None
    sparsity: float | None
    seconds: float
    message: str


def all_cases(torchvision_models: Iterable[str] | None = None) -> list[Case]:
    """Every torchvision classifier, the timm list and the Hugging Face types, as weights and as ONNX."""
    if torchvision_models is None:
        import torchvision.models as tvm

        torchvision_models = tvm.list_models(module=tvm)
    names = [
        *(f"torchvision/{n}" for n in torchvision_models),
        *(f"timm/{n}" for n in TIMM_MODELS),
        *(f"hf/{n}" for n in HF_MODELS),
    ]
    return [Case(name, source) for source in ("weights", "onnx") for name in names]


def smallest_first(cases: Sequence[Case]) -> list[Case]:
    """Orders cases by the model's parameter count (counted on the meta device), so a run cut short has
    covered the most models."""
    import torch

    from workers.compression.architectures import parse_architecture
    from workers.compression.library_models import build

    def params(case: Case) -> int:
        """Counts parameters without allocating them (Hugging Face configs here are all small)."""
        if case.model.startswith("hf/"):
            return 0
        ref = parse_architecture(case.model)
        try:
            model = build(ref, num_classes=CLASSES, image_size=case.size, device="meta")
        except Exception:  # no meta build (RegNets read their init values): count a real one
            try:
                model = build(ref, num_classes=CLASSES, image_size=case.size)
            except Exception:  # it cannot be built at all: run it last, where it fails typed
                return sys.maxsize
        return sum(p.numel() for p in model.parameters())

    torch.set_num_threads(1)
    counts = {case.model: params(case) for case in {c.model: c for c in cases}.values()}
    return sorted(cases, key=lambda c: (counts[c.model], c.source, c.model))


def run_cases(cases: Sequence[Case], workdir: Path, *, jobs: int = 1,
              on_case: Callable[[list[Outcome]], None] = lambda _: None) -> list[Outcome]:
    """Runs every case in its own child process (`jobs` at a time), handing each case's outcomes to
    `on_case` as it ends; returns all outcomes."""
    workdir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_run_child, case, workdir / f"case{i}") for i, case in enumerate(cases)]
        outcomes: list[Outcome] = []
        for future in as_completed(futures):
            outcomes += future.result()
            on_case(future.result())
        return outcomes


def _run_child(case: Case, folder: Path) -> list[Outcome]:
    """Runs one case in a fresh interpreter (one torch thread); a crash or overrun fails its methods."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "tests.coverage.harness",
        "--child",
        json.dumps(asdict(case)),
        "--workdir",
        str(folder),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            check=False,
            timeout=JOB_LIMIT_S * (len(case.methods) + 1) * LOAD_ALLOWANCE,
        )
        stdout, why = done.stdout, f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        why = "the case overran its time"
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # models and artifacts of big networks fill disks
    outcomes = [Outcome(**json.loads(line)) for line in stdout.splitlines() if line.startswith("{")]
    seen = {o.method for o in outcomes}
    elapsed = time.monotonic() - started
    return outcomes + [
        Outcome(case.model, case.source, method, False, "crashed", None, None, elapsed, why)
        for method in case.methods
        if method not in seen
    ]


def _child(case: Case, folder: Path) -> Iterator[Outcome]:
    """Inside the child: prepares the upload, then runs each method under the job's CPU-time limit."""
    import torch

    from tests.coverage.uploads import prepare, tiny_dataset
    from workers.compression.config import JobConfig
    from workers.compression.errors import CompressionError
    from workers.compression.pipeline import compress

    torch.set_num_threads(1)
    dataset = tiny_dataset(folder / "data.npz", classes=CLASSES, size=case.size)
    started = time.process_time()
    try:
        model_path, architecture = prepare(case.model, case.source, folder, dataset=dataset, classes=CLASSES,
                                           size=case.size)
    except Exception as exc:  # the model cannot be built or exported as a user would: not our chain
        for method in case.methods:
            yield Outcome(
                case.model,
                case.source,
                method,
                False,
                "export_failed",
                None,
                None,
                time.process_time() - started,
                f"{type(exc).__name__}: {str(exc)[:300]}",
            )
        return
    for method in case.methods:
        target = {"sparsity": 0.9} if method in ("magnitude", "weightmom") else {"pruning_ratio": 0.5}
        config = JobConfig.model_validate(
            {
                "method": method,
                "architecture": architecture,
                "target": target,
                "finetune": {"epochs": 1, "batch_size": case.batch_size},
                "data": {"image_size": case.size},
                # TPP's default ramp is up to 2,000 steps: a coverage run only needs the phase to run.
                "options": {"max_reg_steps": 10, "zero_out_interval": 50} if method == "tpp" else {},
            }
        )
        started = time.process_time()
        signal.setitimer(signal.ITIMER_PROF, JOB_LIMIT_S)
        try:
            result = compress(
                model_path=model_path,
                dataset_path=dataset,
                config=config,
                out_dir=folder / method,
                device="cpu",
            )
            report = result.report
            yield Outcome(
                case.model,
                case.source,
                method,
                True,
                "ok",
                report["baseline"]["flops"] / max(report["pruned"]["flops"], 1),
                report["target"]["achieved"].get("sparsity"),
                time.process_time() - started,
                "",
            )
        except CompressionError as exc:
            yield Outcome(
                case.model,
                case.source,
                method,
                False,
                exc.code,
                None,
                None,
                time.process_time() - started,
                exc.message[:300],
            )
        except TimeoutError:
            yield Outcome(
                case.model,
                case.source,
                method,
                False,
                "timeout",
                None,
                None,
                time.process_time() - started,
                f"over {JOB_LIMIT_S} CPU seconds",
            )
        except Exception as exc:  # what a job would report as `internal`
            yield Outcome(
                case.model,
                case.source,
                method,
                False,
                "internal",
                None,
                None,
                time.process_time() - started,
                f"{type(exc).__name__}: {str(exc)[:300]}",
            )
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)


def _on_alarm(signum: int, frame: object) -> None:
    """Turns the job's CPU-time limit into an exception at the next Python step."""
    raise TimeoutError


def write_table(outcomes: Sequence[Outcome], path: Path, *, command: str,
                pending: Sequence[Case] = ()) -> dict[str, Any]:
    """Writes docs/coverage.md (totals per family × source × method, then every row, then the cases not
    run yet); returns the totals."""
    totals: dict[str, Any] = {}
    for o in outcomes:
        family = o.model.split("/")[0]
        key = f"{family} {o.source} {o.method}"
        passed, total = totals.get(key, (0, 0))
        totals[key] = (passed + o.passed, total + 1)
    lines = [
        "# Model coverage",
        "",
        f"Made by `{command}` (random weights with BatchNorm statistics calibrated on the training images "
        "as the job feeds them, "
        f"{CLASSES} classes, {SIZE} px unless the model needs more, 1 finetune epoch of batches of {BATCH} "
        "(fewer at a larger input, as many pixels per batch); the whole chain: "
        "load → prune → finetune → ONNX export → onnxruntime parity → report; seconds are the job's CPU "
        "seconds). Regenerate it with the same command.",
        "",
        "| library | uploaded as | method | passed | share |",
        "|---|---|---|---|---|",
    ]
    for key, (passed, total) in sorted(totals.items()):
        family, source, method = key.split()
        lines.append(f"| {family} | {source} | {method} | {passed}/{total} | {passed / total:.0%} |")
    lines += [
        "",
        "| model | uploaded as | method | result | FLOPs reduction | sparsity | CPU seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in sorted(outcomes, key=lambda o: (o.model, o.source, o.method)):
        result = "pass" if o.passed else f"`{o.code}`: {o.message.replace('|', '/')[:160]}"
        flops = f"{o.flops_reduction:.2f}×" if o.flops_reduction else ""
        sparsity = f"{o.sparsity:.2f}" if o.sparsity is not None else ""
        lines.append(
            f"| {o.model} | {o.source} | {o.method} | {result} | {flops} | {sparsity} | {o.seconds:.0f} |"
        )
    if pending:
        lines += ["", f"Not run yet ({len(pending)} uploads; `--results FILE` resumes): "
                  + ", ".join(_describe(c) for c in pending)]
    path.write_text("\n".join(lines) + "\n")
    return totals


def _describe(case: Case) -> str:
    """Names an upload not (fully) run: `model (source)`, with the methods left when some already ran."""
    every = Case(case.model, case.source).methods
    if case.methods == every:
        return f"{case.model} ({case.source})"
    return f"{case.model} ({case.source}: {', '.join(case.methods)})"


def pending_cases(outcomes: Sequence[Outcome]) -> list[Case]:
    """Every upload with a method not in `outcomes`, narrowed to those methods."""
    ran = {(o.model, o.source, o.method) for o in outcomes}
    cases = [replace(c, only=tuple(m for m in c.methods if (c.model, c.source, m) not in ran))
             for c in all_cases()]
    return [c for c in cases if c.only]


def _recorded(path: Path | None) -> list[Outcome]:
    """Reads the outcomes an earlier run appended to `path` (none when it is absent)."""
    if path is None or not path.exists():
        return []
    return [Outcome(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the coverage suite (or, with --child, one case inside a child process)."""
    parser = argparse.ArgumentParser(prog="python -m tests.coverage.harness", description=__doc__)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/secateur-coverage"))
    parser.add_argument("--jobs", type=int, default=2, help="cases at once (one torch thread each)")
    parser.add_argument("--only", help="run only models whose name contains this text")
    parser.add_argument("--source", choices=("weights", "onnx"), help="run only uploads of this kind")
    parser.add_argument("--method", action="append", choices=METHODS, default=[],
                        help="run only this method (repeatable)")
    parser.add_argument("--smallest-first", action="store_true", help="order cases by parameter count")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "coverage.md")
    parser.add_argument("--results", type=Path, help="append each outcome as a JSON line here, as it ends; "
                        "model × method pairs already there are not run again, and the table covers them all")
    args = parser.parse_args(argv)
    if args.child:
        signal.signal(signal.SIGPROF, _on_alarm)
        fields = json.loads(args.child)
        for outcome in _child(Case(**{**fields, "only": tuple(fields.get("only", ()))}), args.workdir):
            print(json.dumps(asdict(outcome)), flush=True)
        return 0
    done = _recorded(args.results)
    recorded = {(o.model, o.source, o.method) for o in done}
    cases = []
    for case in all_cases():
        if (args.only is None or args.only in case.model) and args.source in (None, case.source):
            todo = tuple(m for m in case.methods
                         if (case.model, case.source, m) not in recorded and m in (args.method or METHODS))
            cases += [replace(case, only=todo)] if todo else []

    def record(outcomes: list[Outcome]) -> None:
        """Appends one finished case's outcomes to the results file."""
        if args.results:
            with args.results.open("a") as f:
                f.writelines(json.dumps(asdict(o)) + "\n" for o in outcomes)

    if args.smallest_first:
        cases = smallest_first(cases)
    outcomes = done + run_cases(cases, args.workdir, jobs=args.jobs, on_case=record)
    command = " ".join(["python -m tests.coverage.harness", *(argv if argv is not None else sys.argv[1:])])
    totals = write_table(outcomes, args.out, command=command, pending=pending_cases(outcomes))
    for key, (passed, total) in sorted(totals.items()):
        print(f"{key}: {passed}/{total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
