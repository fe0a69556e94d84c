"""`secateur`: the one command-line entry point; each command's module is imported only when it runs.

So `secateur submit` never loads torch, and `secateur compress` never loads FastAPI.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

__all__ = ["COMMANDS", "main"]


class Command(NamedTuple):
    """Where a command lives (`module:function`, called with its argv) and what it does."""

    target: str
    help: str
    keep_name: bool = False  # pass the command word on too (for modules that parse subcommands)


COMMANDS: dict[str, Command] = {
    "compress": Command("workers.compression.cli:main", "compress a model locally (the engine alone)"),
    "serve": Command("service.serve:main", "run the API (and, by default, an embedded worker)"),
    "worker": Command("workers.worker_cli:main", "run a worker for the configured database/broker/storage"),
    "migrate": Command("service.cli:migrate", "bring the database schema up to date (alembic upgrade head)"),
    "keys": Command("service.auth.cli:main", "create, list or revoke API keys (keys create --tenant T)"),
    **{
        name: Command("service.client_cli:main", help, keep_name=True)
        for name, help in (
            ("submit", "upload a model and dataset as a new job (HTTP client)"),
            ("status", "show a job (HTTP client)"),
            ("jobs", "list your jobs (HTTP client)"),
            ("download", "download a finished job's model and report (HTTP client)"),
            ("cancel", "cancel a job (HTTP client)"),
        )
    },
}


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
        epilog=f"commands:\n{listing}\n\n`secateur COMMAND --help` shows a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    opts = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    command = COMMANDS[opts.command]
    rest = [opts.command, *opts.args] if command.keep_name else list(opts.args)
    return int(_load(command.target)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
