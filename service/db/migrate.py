"""Runs the Alembic migrations in migrations/ programmatically (`secateur migrate`, embedded startup).

The scripts are found through the installed `migrations` package, so a wheel works outside a checkout.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

import migrations

__all__ = ["MIGRATIONS_DIR", "alembic_config", "upgrade_head"]

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent


def alembic_config(url: str | None = None) -> Config:
    """Returns an Alembic config for our scripts; `url` overrides the settings' database URL."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_head(engine: Engine | None = None, *, url: str | None = None) -> None:
    """Brings the database to the newest schema, on `engine` if given, else on `url` or the settings' URL."""
    config = alembic_config(url)
    if engine is None:
        command.upgrade(config, "head")
        return
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
