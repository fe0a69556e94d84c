"""`secateur submit|status|jobs|download|cancel|delete|report|events|upload|inputs|rerun`: the HTTP API's
command-line client.

Every command takes `--url` and `--api-key` (else SECATEUR_URL / SECATEUR_API_KEY) and `--json`.
Results go to stdout, progress and errors to stderr, so `ID=$(secateur submit ...)` captures just the job
id and `secateur jobs --json | jq` reads clean JSON. Exit codes are listed in `CLIENT_HELP`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service.cli import CLIENT_COMMANDS, CLIENT_HELP
from service.client import ARTIFACT_NAMES, ApiError, Job, SecateurClient
from service.client_render import ProgressView, describe, headline, report_table
from service.client_sweeps import add_sweep_arguments, run_sweep

__all__ = ["add_subcommands", "main"]

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3
DEFAULT_URL = "http://127.0.0.1:8000"
Handler = Callable[[argparse.Namespace], int]
_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


def _client(args: argparse.Namespace) -> SecateurClient:
    """Builds a client for `--url` / `--api-key`, falling back to SECATEUR_URL / SECATEUR_API_KEY."""
    url = args.url or os.environ.get("SECATEUR_URL") or DEFAULT_URL
    return SecateurClient(url, args.api_key or os.environ.get("SECATEUR_API_KEY") or None)


def _print_json(value: Any) -> None:
    """Writes one JSON document to stdout."""
    print(json.dumps(value, indent=2))


def _finish(job: Job, as_json: bool) -> int:
    """Reports a terminal job (its JSON, or a summary and how to download) and returns the exit code."""
    if as_json:
        _print_json(job.raw)
    elif job.status == "succeeded":
        print(f"{job.id} succeeded{headline(job.metrics)}")
        print(f"download with: secateur download {job.id} [--name model.onnx.zst|report.json]")
    if job.status == "succeeded":
        return EXIT_OK
    print(f"error: {job.error_code or job.status}: {job.error_message or f'job {job.id} was {job.status}'}",
          file=sys.stderr)
    return EXIT_CANCELLED if job.status == "cancelled" else EXIT_FAILED


def _wait(client: SecateurClient, job_id: str, as_json: bool) -> int:
    """Follows a job to its end with a progress view on stderr; returns the exit code."""
    return _finish(client.wait(job_id, on_update=ProgressView(sys.stderr).update), as_json)


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


def _queued(client: SecateurClient, job: Job, args: argparse.Namespace) -> int:
    """Prints a new job's id or JSON, or follows it to its end with --wait; returns the exit code."""
    if args.wait:
        if not args.json:
            print(job.id, flush=True)
        return _wait(client, job.id, args.json)
    if args.json:
        _print_json(job.raw)
    else:
        print(job.id)
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    """Submits a job on a model and dataset (files, or stored ids); prints its id or JSON (--wait follows)."""
    config = build_config(args)
    if "method" not in config:
        print("error: invalid_config: give --method or a --config file with a method", file=sys.stderr)
        return EXIT_FAILED
    model, dataset = args.model_opt or args.model, args.dataset_opt or args.dataset
    if model is None or dataset is None:
        print("error: invalid_input: give a model and a dataset (files or stored ids)", file=sys.stderr)
        return EXIT_FAILED
    with _client(args) as client:
        job = client.submit(model, dataset, config, idempotency_key=args.idempotency_key)
        return _queued(client, job, args)


def cmd_upload(args: argparse.Namespace) -> int:
    """Stores a model or dataset file for reuse by id; prints the id (the first one for the same bytes)."""
    with _client(args) as client:
        stored = client.upload(args.kind, args.file)
    if args.json:
        _print_json(vars(stored))
        return EXIT_OK
    if not stored.created:
        print(f"already stored: the same bytes as {args.kind} {stored.id}", file=sys.stderr)
    print(stored.id)
    return EXIT_OK


def cmd_inputs(args: argparse.Namespace) -> int:
    """Lists the stored models or datasets, newest first; `--delete ID` deletes one."""
    with _client(args) as client:
        if args.delete:
            client.delete_stored(args.kind, args.delete)
            deleted = {"id": args.delete, "deleted": True}
            print(json.dumps(deleted) if args.json else f"{args.delete}  deleted")
            return EXIT_OK
        items = client.stored(args.kind, limit=args.limit)
    if args.json:
        _print_json({"items": [vars(item) for item in items]})
        return EXIT_OK
    for item in items:
        when, digest = item.created_at[:19], item.sha256[:12]
        print(f"{item.id}  {when:19}  {item.format:<12} {item.bytes:>12} B  {digest}")
    return EXIT_OK


def cmd_rerun(args: argparse.Namespace) -> int:
    """Reruns a succeeded job on its inputs and resolved config; prints the new job (--wait follows it)."""
    with _client(args) as client:
        return _queued(client, client.rerun(args.job_id, idempotency_key=args.idempotency_key), args)


def cmd_status(args: argparse.Namespace) -> int:
    """Prints one job's state (or its JSON); with --wait follows it to the end."""
    with _client(args) as client:
        if args.wait:
            return _wait(client, args.job_id, args.json)
        job = client.get(args.job_id)
    if args.json:
        _print_json(job.raw)
        return EXIT_OK
    print(f"{job.id}  {describe(job, bar=False)}")
    if job.error_code:
        print(f"error: {job.error_code}: {job.error_message}")
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    """Lists one page of the caller's jobs, newest first; `--cursor` continues where a page ended."""
    with _client(args) as client:
        page = client.list(status=args.status, limit=args.limit, cursor=args.cursor)
    if args.json:
        _print_json({"jobs": [job.raw for job in page.jobs], "next_cursor": page.next_cursor})
        return EXIT_OK
    for job in page.jobs:
        created = str(job.raw.get("created_at") or "")[:19]
        print(f"{job.id}  {created:19}  {describe(job, bar=False)}")
    if page.next_cursor:
        print(f"(more: secateur jobs --cursor {page.next_cursor})", file=sys.stderr)
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    """Downloads one artifact of a finished job; prints where it was written."""
    with _client(args) as client:
        path = client.download(args.job_id, args.name, args.output or Path.cwd())
    if args.json:
        size = path.stat().st_size
        _print_json({"job_id": args.job_id, "name": args.name, "path": str(path), "bytes": size})
    else:
        print(path)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    """Asks the server to cancel a job; prints its new status."""
    with _client(args) as client:
        job = client.cancel(args.job_id)
    if args.json:
        _print_json(job.raw)
    else:
        print(f"{job.id}  {job.status}")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    """Deletes a finished job and its files."""
    with _client(args) as client:
        client.delete(args.job_id)
    if args.json:
        _print_json({"id": args.job_id, "deleted": True})
    else:
        print(f"{args.job_id}  deleted")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Prints a succeeded job's report: a before/after table, or the whole report.json with --json."""
    with _client(args) as client:
        report = client.report(args.job_id)
    if args.json:
        _print_json(report)
    else:
        print(report_table(report))
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    """Prints a job's events as they come (one line each, or one JSON object per line) until it ends."""
    with _client(args) as client:
        for event in client.follow(args.job_id):
            job = Job.from_json(event.json())
            if args.json:
                print(json.dumps({"event": event.event, "id": event.id, "job": job.raw}), flush=True)
            else:
                print(f"{event.event:<9} {describe(job, bar=False)}", flush=True)
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    """Starts a sweep on stored inputs, or shows, follows, cancels, deletes or lists sweeps."""
    with _client(args) as client:
        return run_sweep(args, client, build_config(args))


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


def _common_options() -> argparse.ArgumentParser:
    """The options every client command shares: where the server is, the key, and JSON output."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("server and output")
    group.add_argument("--url", help=f"the API's base URL (default: $SECATEUR_URL, else {DEFAULT_URL})")
    group.add_argument("--api-key", help="API key (default: $SECATEUR_API_KEY; the variable keeps it out of "
                                         "the process list)")
    group.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    return parent


def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers every client command; each sets `handler(args) -> exit code`."""
    common = _common_options()

    def command(name: str, handler: Handler) -> argparse.ArgumentParser:
        """Adds one command with the shared options and the environment/exit-code epilog."""
        parser = subparsers.add_parser(name, help=CLIENT_COMMANDS[name], description=CLIENT_COMMANDS[name],
                                       parents=[common], epilog=CLIENT_HELP,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.set_defaults(handler=_guarded(handler))
        return parser

    p = command("submit", cmd_submit)
    p.add_argument("model", nargs="?", help="ONNX model or safetensors weights, or a stored model's id")
    p.add_argument("dataset", nargs="?", help=".npz or image-folder archive (.zip, .tar.gz), or a stored id")
    p.add_argument("--model", dest="model_opt", metavar="ID|PATH", help="the model (or MODEL)")
    p.add_argument("--dataset", dest="dataset_opt", metavar="ID|PATH", help="the dataset (or DATASET)")
    p.add_argument("--method", choices=("weightmom", "tpp", "magnitude", "l1"))
    p.add_argument("--architecture", help="architecture of safetensors weights, e.g. resnet56")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-sparsity", type=float, metavar="S", help="fraction of weights zeroed")
    target.add_argument("--pruning-ratio", type=float, metavar="P", help="fraction of channels removed")
    target.add_argument("--flops-reduction", type=float, metavar="F", help="FLOPs divided by F")
    p.add_argument("--epochs", type=int, help="finetuning epochs")
    p.add_argument("--config", help="JSON job config; the flags above override its fields")
    p.add_argument("--idempotency-key", help="resubmitting with the same key returns the same job")
    p.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")

    p = command("upload", cmd_upload)
    p.add_argument("kind", choices=("model", "dataset"))
    p.add_argument("file", help="the file to store; jobs then name it by the printed id")

    p = command("inputs", cmd_inputs)
    p.add_argument("kind", choices=("model", "dataset"))
    p.add_argument("--limit", type=int, default=100, help="how many to list (1-1000)")
    p.add_argument("--delete", metavar="ID", help="delete this stored input (refused while a job uses it)")

    p = command("rerun", cmd_rerun)
    p.add_argument("job_id")
    p.add_argument("--idempotency-key", help="rerunning with the same key returns the same job")
    p.add_argument("--wait", action="store_true", help="follow the rerun until it ends")

    p = command("status", cmd_status)
    p.add_argument("job_id")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")

    p = command("jobs", cmd_jobs)
    p.add_argument("--status", choices=_STATUSES)
    p.add_argument("--limit", type=int, default=50, help="jobs per page (1-200)")
    p.add_argument("--cursor", help="continue after the page that printed this cursor")

    p = command("download", cmd_download)
    p.add_argument("job_id")
    p.add_argument("-o", "--output", help="file or folder to write (default: current folder)")
    p.add_argument("--name", choices=ARTIFACT_NAMES, default="model.onnx")

    for name, handler in (("cancel", cmd_cancel), ("delete", cmd_delete), ("report", cmd_report),
                          ("events", cmd_events)):
        command(name, handler).add_argument("job_id")

    add_sweep_arguments(command("sweep", cmd_sweep))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one client command (`secateur COMMAND ...`, or `python -m service.client_cli COMMAND ...`)."""
    parser = argparse.ArgumentParser(prog="secateur", description="Secateur's command-line client.",
                                     epilog=CLIENT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
