"""`secateur submit|status|jobs|download|cancel`: the command-line client of the HTTP API.

The server is `SECATEUR_URL` (default http://127.0.0.1:8000) and the key `SECATEUR_API_KEY`.
Exit codes: 0 done (or the job succeeded), 1 the request was refused or the job failed, 2 bad usage,
3 the job was cancelled. Results go to stdout, progress and errors to stderr, so `ID=$(secateur submit ...)`
captures just the job id.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from service.client import ARTIFACT_NAMES, ApiError, Job, SecateurClient

__all__ = ["add_subcommands", "main"]

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3
Handler = Callable[[argparse.Namespace], int]
_BAR_WIDTH = 24
_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


def _client() -> SecateurClient:
    """Builds a client for the server named by SECATEUR_URL, authenticated by SECATEUR_API_KEY."""
    return SecateurClient(
        os.environ.get("SECATEUR_URL", "http://127.0.0.1:8000"), os.environ.get("SECATEUR_API_KEY") or None,
    )


def _duration(seconds: float) -> str:
    """Formats seconds compactly: 42s, 3m05s, 1h02m."""
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _live_metrics(job: Job) -> str:
    """The running job's latest training metrics (loss, accuracy, ...) as `name value` pairs, at most four."""
    source = (job.raw.get("progress") or {}).get("metrics") or {}
    scalars = [(k, v) for k, v in source.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return "  ".join(f"{k} {v:.4g}" for k, v in scalars[:4])


def describe(job: Job, *, bar: bool) -> str:
    """One line for a job's state: stage, [bar,] percent, epoch/epochs, metrics, ETA."""
    parts = [job.status if job.status != "running" else (job.stage or "running")]
    p = job.progress
    if p.fraction is not None:
        fraction = min(max(p.fraction, 0.0), 1.0)
        if bar:
            filled = int(fraction * _BAR_WIDTH)
            parts.append("[" + "#" * filled + "-" * (_BAR_WIDTH - filled) + "]")
        parts.append(f"{fraction:4.0%}")
    if p.epochs:
        parts.append(f"epoch {p.epoch or 0}/{p.epochs}")
    metrics = _live_metrics(job)
    if metrics:
        parts.append(metrics)
    if p.eta_s is not None and not job.terminal:
        parts.append(f"ETA {_duration(p.eta_s)}")
    return "  ".join(parts)


class ProgressView:
    """Shows a job's progress: a bar redrawn in place on a terminal, one plain line per change otherwise."""

    def __init__(self, stream: IO[str]) -> None:
        """Writes to `stream`; draws a live bar only when it is a terminal."""
        self.stream = stream
        self.tty = stream.isatty()
        self._last_key: tuple[Any, ...] | None = None

    def update(self, job: Job) -> None:
        """Renders one new job state (the `on_update` callback of `SecateurClient.wait`)."""
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r" + describe(job, bar=True)[:width].ljust(width))
            if job.terminal:
                self.stream.write("\n")
        else:
            # Plain logs get a line per status, stage or epoch change, not one per poll.
            key = (job.status, job.stage, job.progress.epoch)
            if key == self._last_key:
                return
            self._last_key = key
            self.stream.write(describe(job, bar=False) + "\n")
        self.stream.flush()


def _headline(metrics: dict[str, Any]) -> str:
    """`: accuracy a -> b, params p -> q, ONNX zstd x -> y bytes` from a finished job's metrics."""
    base, pruned = metrics.get("baseline") or {}, metrics.get("pruned") or {}
    parts = []
    for key, label, fmt in (("accuracy", "accuracy", "{:.2%}"), ("params", "params", "{:,}"),
                            ("onnx_zstd_bytes", "ONNX zstd bytes", "{:,}")):
        before, after = base.get(key), pruned.get(key)
        if isinstance(before, int | float) and isinstance(after, int | float):
            parts.append(f"{label} {fmt.format(before)} -> {fmt.format(after)}")
    return ": " + ", ".join(parts) if parts else ""


def _finish(job: Job) -> int:
    """Reports a terminal job: a summary on success, `error: <code>: <message>` and a non-zero code if not."""
    if job.status == "succeeded":
        print(f"{job.id} succeeded{_headline(job.metrics)}")
        print(f"download with: secateur download {job.id} [--name model.onnx.zst|report.json]")
        return EXIT_OK
    code = job.error_code or job.status
    message = job.error_message or f"job {job.id} was {job.status}"
    print(f"error: {code}: {message}", file=sys.stderr)
    return EXIT_CANCELLED if job.status == "cancelled" else EXIT_FAILED


def _wait(client: SecateurClient, job_id: str) -> int:
    """Follows a job to its end with a progress view on stderr; returns the exit code."""
    return _finish(client.wait(job_id, on_update=ProgressView(sys.stderr).update))


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    """Merges `--config FILE` (JSON) with the flags given on the command line (flags win)."""
    config: dict[str, Any] = json.loads(Path(args.config).read_text()) if args.config else {}
    if args.method:
        config["method"] = args.method
    if args.architecture:
        config["architecture"] = args.architecture
    targets = {"sparsity": args.target_sparsity, "pruning_ratio": args.pruning_ratio,
               "flops_reduction": args.flops_reduction}
    given = {k: v for k, v in targets.items() if v is not None}
    if given:
        config["target"] = given
    if args.epochs is not None:
        config["finetune"] = {**config.get("finetune", {}), "epochs": args.epochs}
    return config


def cmd_submit(args: argparse.Namespace) -> int:
    """Uploads a model and dataset as a new job; prints its id (and follows it with --wait)."""
    config = build_config(args)
    if "method" not in config:
        print("error: invalid_config: give --method or a --config file with a method", file=sys.stderr)
        return EXIT_FAILED
    with _client() as client:
        job = client.submit(args.model, args.dataset, config, idempotency_key=args.idempotency_key)
        print(job.id)
        return _wait(client, job.id) if args.wait else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Prints one job's state (or its JSON with --json); with --wait follows it to the end."""
    with _client() as client:
        if args.wait:
            return _wait(client, args.job_id)
        job = client.get(args.job_id)
    if args.json:
        print(json.dumps(job.raw, indent=2))
        return EXIT_OK
    print(f"{job.id}  {describe(job, bar=False)}")
    if job.error_code:
        print(f"error: {job.error_code}: {job.error_message}")
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    """Lists the caller's jobs, newest first, one per line."""
    with _client() as client:
        page = client.list(status=args.status, limit=args.limit)
    for job in page.jobs:
        created = str(job.raw.get("created_at") or "")[:19]
        print(f"{job.id}  {created:19}  {describe(job, bar=False)}")
    if page.next_cursor:
        print(f"(more: raise --limit; next cursor {page.next_cursor})", file=sys.stderr)
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    """Downloads one artifact of a finished job; prints where it was written."""
    with _client() as client:
        path = client.download(args.job_id, args.name, args.output or Path.cwd())
    print(path)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    """Asks the server to cancel a job; prints its new status."""
    with _client() as client:
        job = client.cancel(args.job_id)
    print(f"{job.id}  {job.status}")
    return EXIT_OK


def _guarded(handler: Handler) -> Handler:
    """Wraps a handler so that API and file errors print `error: <code>: <message>` and exit 1."""

    def run(args: argparse.Namespace) -> int:
        """Runs the handler, turning expected failures into a message and an exit code."""
        try:
            return handler(args)
        except ApiError as exc:
            print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        except (OSError, ValueError) as exc:  # a missing file, a bad --config JSON, an unknown artifact
            print(f"error: invalid_input: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            print("interrupted; the job keeps running on the server", file=sys.stderr)
        return EXIT_FAILED

    run.__doc__ = handler.__doc__
    return run


def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers submit, status, jobs, download and cancel; each sets `handler(args) -> exit code`."""
    p = subparsers.add_parser("submit", help="upload a model and dataset as a new job")
    p.add_argument("model", help="ONNX model or safetensors weights")
    p.add_argument("dataset", help=".npz or image-folder archive (.zip, .tar.gz)")
    p.add_argument("--method", choices=("weightmom", "tpp", "magnitude", "l1"))
    p.add_argument("--architecture", help="built-in architecture of safetensors weights, e.g. resnet56")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-sparsity", type=float, metavar="S", help="fraction of weights zeroed")
    target.add_argument("--pruning-ratio", type=float, metavar="P", help="fraction of channels removed")
    target.add_argument("--flops-reduction", type=float, metavar="F", help="FLOPs divided by F")
    p.add_argument("--epochs", type=int, help="finetuning epochs")
    p.add_argument("--config", help="JSON job config; the flags above override its fields")
    p.add_argument("--idempotency-key", help="resubmitting with the same key returns the same job")
    p.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    p.set_defaults(handler=_guarded(cmd_submit))

    p = subparsers.add_parser("status", help="show one job")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p.set_defaults(handler=_guarded(cmd_status))

    p = subparsers.add_parser("jobs", help="list your jobs")
    p.add_argument("--status", choices=_STATUSES)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(handler=_guarded(cmd_jobs))

    p = subparsers.add_parser("download", help="download a finished job's model or report")
    p.add_argument("job_id")
    p.add_argument("-o", "--output", help="file or folder to write (default: current folder)")
    p.add_argument("--name", choices=ARTIFACT_NAMES, default="model.onnx")
    p.set_defaults(handler=_guarded(cmd_download))

    p = subparsers.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job_id")
    p.set_defaults(handler=_guarded(cmd_cancel))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the client commands on their own (`python -m service.client_cli ...`)."""
    parser = argparse.ArgumentParser(prog="secateur", description="Secateur's command-line client.")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
