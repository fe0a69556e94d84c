"""Shared migration check: upgrade → downgrade → upgrade, then no drift between models and schema."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.db.migrate import alembic_config
from service.db.models import Base
from service.db.session import make_engine


def check_round_trip_and_no_drift(url: str) -> None:
    """Runs the migrations both ways on `url` and asserts the models match the migrated schema exactly."""
    config = alembic_config(url)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
        command.upgrade(config, "head")
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert {"jobs", "job_events"} <= set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
