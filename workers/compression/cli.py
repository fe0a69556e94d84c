"""`secateur compress`: the engine on its own, from files to a verified ONNX model and report.json.

Exit codes: 0 done, 2 bad input (one line `error: <code>: <message>` on stderr), 1 unexpected failure,
130 interrupted. Progress goes to stderr: a bar on a terminal, plain lines (one per stage and epoch)
otherwise; the summary goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, TextIO

from pydantic import ValidationError

from workers.compression.config import JobConfig
from workers.compression.errors import CompressionError, InvalidConfig
from workers.compression.hooks import Progress

__all__ = ["add_job_flags", "build_config", "main", "parser"]

# Flags that set a config field, for messages that point at what the user typed.
_FLAG_FOR = {
    "method": "--method", "architecture": "--architecture",
    "target": "--target-sparsity, --pruning-ratio or --flops-reduction",
    "finetune.epochs": "--epochs", "finetune.batch_size": "--batch-size", "finetune.lr": "--lr",
    "seed": "--seed", "data.image_size": "--image-size",
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are typed, so they print as one line like every other refusal."""

    def error(self, message: str) -> NoReturn:
        """Raises InvalidConfig instead of printing usage and exiting."""
        raise InvalidConfig(f"{message} (see `secateur compress --help`)")


def parser() -> argparse.ArgumentParser:
    """Builds the `compress` argument parser (DESIGN.md, Command line)."""
    p = _Parser(
        prog="secateur compress",
        description="Prune and finetune a model, export it to ONNX verified against PyTorch, and report.",
    )
    add_job_flags(p, dataset_required=True)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--out", type=Path, required=True, help="output folder for model.onnx, .zst, report.json")
    return p


def add_job_flags(p: argparse.ArgumentParser, *, dataset_required: bool) -> None:
    """Adds the flags naming a job's inputs and config (what `build_config` reads) and --threads."""
    p.add_argument("--model", type=Path, required=True, help="ONNX, or safetensors + --architecture")
    p.add_argument("--dataset", type=Path, required=dataset_required,
                   help=".npz, or image folders in .zip/.tar/.tar.gz")
    p.add_argument("--method", help="weightmom | tpp | magnitude | l1")
    p.add_argument("--architecture", help="what safetensors weights belong to: a zoo network (resnet20), "
                   "torchvision/<builder>, timm/<model>, or hf (a .zip/.tar checkpoint archive)")
    p.add_argument("--image-size", type=int, help="square side the model is fed (default: the model's own)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-sparsity", type=float, help="fraction of prunable weights to zero (0..1)")
    target.add_argument("--pruning-ratio", type=float, help="layerwise fraction of filters to remove (0..1)")
    target.add_argument("--flops-reduction", type=float, help="FLOPs speedup to reach, e.g. 2.0")
    p.add_argument("--epochs", type=int, help="finetuning epochs")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--lr", type=float, help="initial learning rate")
    p.add_argument("--seed", type=int, help="random seed (runs are deterministic on CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default: 1)")
    p.add_argument("--config", type=Path, help="JobConfig as JSON; flags override its fields")


def _read_config_file(path: Path) -> dict[str, Any]:
    """Reads a JSON config file into a dict, refusing unreadable or non-object files."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidConfig(f"cannot read --config {str(path)!r}: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidConfig(f"--config {str(path)!r} must hold a JSON object, not {type(raw).__name__}")
    return raw


def _explain(exc: ValidationError) -> str:
    """Turns pydantic's errors into one line naming the field (and the flag that sets it)."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "config"
        flag = _FLAG_FOR.get(field)
        parts.append(f"{field}{f' ({flag})' if flag else ''}: {error['msg']}")
    return "; ".join(parts)


def build_config(args: argparse.Namespace) -> JobConfig:
    """Merges the --config file with the flags (flags win) and validates the result."""
    raw = _read_config_file(args.config) if args.config else {}
    for key, value in (("method", args.method), ("architecture", args.architecture), ("seed", args.seed)):
        if value is not None:
            raw[key] = value
    target = {key: value for key, value in (
        ("sparsity", args.target_sparsity), ("pruning_ratio", args.pruning_ratio),
        ("flops_reduction", args.flops_reduction),
    ) if value is not None}
    if target:
        raw["target"] = target
    finetune = {key: value for key, value in (
        ("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
    ) if value is not None}
    if finetune:
        raw["finetune"] = {**(raw.get("finetune") or {}), **finetune}
    if args.image_size is not None:
        raw["data"] = {**(raw.get("data") or {}), "image_size": args.image_size}
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise InvalidConfig(_explain(exc)) from None


class ProgressPrinter:
    """Shows progress on stderr: a redrawn bar on a terminal, else a line per stage and per epoch."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.stage = ""
        self.drawn = False

    def __call__(self, event: Progress) -> None:
        """Prints one event, throttled to 10 redraws a second on a terminal."""
        now = time.monotonic()
        if self.tty:
            if now - self.last_draw >= 0.1 or event.epoch_end or event.stage != self.stage:
                self.stream.write("\r\x1b[2K" + self._line(event, now))
                self.stream.flush()
                self.last_draw, self.drawn = now, True
        elif event.epoch_end or event.stage != self.stage:
            self.stream.write(self._line(event, now) + "\n")
            self.stream.flush()
        self.stage = event.stage

    def close(self) -> None:
        """Ends the bar's line, so what follows starts on a fresh one."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False

    def _line(self, event: Progress, now: float) -> str:
        """Formats `[#####-----]  42% finetuning epoch 3/10 loss 0.41 accuracy 0.902 ETA 1m05s`."""
        width = 24
        filled = round(width * event.fraction)
        parts = [f"[{'#' * filled}{'-' * (width - filled)}] {event.fraction * 100:3.0f}% {event.stage}"]
        if event.epochs:
            parts.append(f"epoch {event.epoch}/{event.epochs}")
        parts += [f"{key} {value:.4g}" for key, value in event.metrics.items()]
        elapsed = now - self.started
        if 0.05 < event.fraction < 1.0:
            remaining = int(elapsed * (1.0 - event.fraction) / event.fraction)
            parts.append(f"ETA {remaining // 60}m{remaining % 60:02d}s")
        return " ".join(parts)


def _summary(report: dict[str, Any], out: Path) -> str:
    """Returns the few figures a user wants first, as lines for stdout."""
    b, p = report["baseline"], report["pruned"]
    achieved = report["target"]["achieved"]
    return "\n".join([
        f"wrote {out / 'model.onnx'}, {out / 'model.onnx.zst'}, {out / 'report.json'}",
        f"accuracy   {b['accuracy']:.4f} -> {p['accuracy']:.4f} (onnxruntime {p['ort_accuracy']:.4f}, "
        f"max |logit diff| {report['verification']['max_abs_diff']:.2e})",
        f"params     {b['params']:,} -> {p['params']:,} ({p['nonzero_params']:,} nonzero; "
        f"sparsity {achieved['sparsity']:.3f})",
        f"MACs       {b['flops']:,} -> {p['flops']:,} ({achieved['flops_reduction']:.2f}x fewer)",
        f"ONNX zstd  {b['onnx_zstd_bytes']:,} -> {p['onnx_zstd_bytes']:,} bytes",
        f"latency    b1 {b['latency_ms']['b1']:.2f} -> {p['latency_ms']['b1']:.2f} ms, "
        f"b64 {b['latency_ms']['b64']:.2f} -> {p['latency_ms']['b64']:.2f} ms",
    ])


def main(argv: list[str] | None = None) -> int:
    """Runs `secateur compress` with `argv` (the words after `secateur`; a leading `compress` is optional)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["compress"]:
        args_list = args_list[1:]
    printer = ProgressPrinter(sys.stderr)
    try:
        args = parser().parse_args(args_list)
        config = build_config(args)
        if args.threads < 1:
            raise InvalidConfig("--threads must be at least 1")
        from workers.compression.pipeline import compress  # torch is imported only once the input parses

        result = compress(
            model_path=args.model, dataset_path=args.dataset, config=config, out_dir=args.out,
            device=args.device, threads=args.threads, on_progress=printer,
        )
    except CompressionError as exc:
        printer.close()
        print(f"error: {exc.code}: {' '.join(exc.message.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        printer.close()
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        printer.close()
        print(f"error: internal: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    printer.close()
    print(_summary(result.report, args.out))
    return 0
