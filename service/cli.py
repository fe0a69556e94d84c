"""`secateur`: the one command-line entry point; each command's module is imported only when it runs.

So `secateur submit` never loads torch, and `secateur compress` never loads FastAPI.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import NamedTuple

__all__ = ["CLIENT_COMMANDS", "CLIENT_HELP", "COMMANDS", "main", "version"]


class Command(NamedTuple):
    """Where a command lives (`module:function`, called with its argv) and what it does."""

    target: str
    help: str
    keep_name: bool = False  # pass the command word on too (for modules that parse subcommands)


# The HTTP client's commands (service/client_cli.py), listed here so `secateur --help` needs no httpx.
CLIENT_COMMANDS: dict[str, str] = {
    "submit": "upload a model and dataset as a new job",
    "status": "show one job",
    "jobs": "list your jobs, newest first",
    "download": "download a finished job's model or report",
    "cancel": "cancel a queued or running job",
    "delete": "delete a finished job and its files",
    "report": "show a succeeded job's report as a before/after table",
    "events": "follow a job's progress events until it ends",
    "upload": "store a model or dataset once (upload model|dataset FILE) and print its id for jobs",
    "inputs": "list your stored models or datasets (inputs model|dataset), or --delete ID",
    "rerun": "rerun a succeeded job on its inputs and resolved config; its report says what matched",
    "sweep": "start a sweep of targets on stored inputs, or show one (sweep status ID) with its Pareto front",
}

COMMANDS: dict[str, Command] = {
    "compress": Command("workers.compression.cli:main", "compress a model locally (the engine alone)"),
    "dataset": Command("workers.compression.dataset_check:main",
                       "check a dataset file locally: classes, splits, sizes, problems (dataset check FILE)"),
    "preflight": Command("workers.compression.preflight_cli:main",
                         "check in seconds whether a job on a model can run (preflight --model M ...)"),
    "serve": Command("service.serve:main", "run the API (and, by default, an embedded worker)"),
    "worker": Command("workers.worker_cli:main", "run a worker for the configured database/broker/storage"),
    "migrate": Command("service.cli:migrate", "bring the database schema up to date (alembic upgrade head)"),
    "keys": Command("service.auth.cli:main", "create, list or revoke API keys (keys create --tenant T)"),
    **{name: Command("service.client_cli:main", f"{help} (HTTP client)", keep_name=True)
       for name, help in CLIENT_COMMANDS.items()},
}

CLIENT_HELP = """environment (the flags win):
  SECATEUR_URL      the API's base URL (--url; default http://127.0.0.1:8000)
  SECATEUR_API_KEY  the API key, sent as `Authorization: Bearer` (--api-key)

exit codes:
  0  done (with --wait: the job succeeded)
  1  failed: refused by the server (the message says why), unreachable, a bad input file, or the job failed
  2  bad usage (unknown option, missing argument)
  3  the job was cancelled (--wait)
"""

SERVER_HELP = """server environment (each setting is SECATEUR_<NAME>; none set = embedded, in ./.secateur):
  SECATEUR_DATABASE_URL  postgresql+psycopg://... (default: SQLite in the data dir)
  SECATEUR_BROKER_URL    redis://host:6379/0 (default: a SQLite broker in the data dir)
  SECATEUR_STORAGE_URL   s3://bucket/prefix (default: files in the data dir)
  SECATEUR_DATA_DIR      where the embedded defaults live (default .secateur)
  SECATEUR_AUTH          open (loopback only) or keys
"""


def version() -> str:
    """Returns the installed package's version ("unknown" when run from a checkout not pip-installed)."""
    try:
        return metadata.version("secateur")
    except metadata.PackageNotFoundError:
        return "unknown"


def migrate(argv: Sequence[str]) -> int:
    """Runs `alembic upgrade head` on the database named by SECATEUR_DATABASE_URL (default: embedded)."""
    argparse.ArgumentParser(prog="secateur migrate", description=migrate.__doc__).parse_args(argv)
    from service.db.migrate import upgrade_head
    from service.settings import get_settings

    upgrade_head(url=get_settings().database_url)
    print("database is at the newest schema", file=sys.stderr)
    return 0


def _load(target: str) -> Callable[[list[str]], int | None]:
    """Imports a command's function from its `module:function` target."""
    module_name, function = target.split(":")
    entry: Callable[[list[str]], int | None] = getattr(importlib.import_module(module_name), function)
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the command word and hands the remaining arguments to that command's own parser."""
    listing = "\n".join(f"  {name:<10} {cmd.help}" for name, cmd in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="secateur",
        description="Secateur: prune, finetune and verify models, as a service or locally.",
        epilog=f"commands:\n{listing}\n\n`secateur COMMAND --help` shows a command's options.\n\n"
               f"{CLIENT_HELP}\n{SERVER_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"secateur {version()}")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    opts = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    command = COMMANDS[opts.command]
    rest = [opts.command, *opts.args] if command.keep_name else list(opts.args)
    return int(_load(command.target)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
