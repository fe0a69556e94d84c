"""Alembic on SQLite: the migrations go both ways and match the models (PostgreSQL: tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.api.app import create_app
from service.db.session import ping_database
from service.settings import Settings
from tests.service.migration_checks import check_round_trip_and_no_drift


def test_sqlite_upgrade_downgrade_upgrade_without_drift(tmp_path: Path) -> None:
    check_round_trip_and_no_drift(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.anyio
async def test_embedded_app_migrates_its_sqlite_database_at_startup(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "fresh"))
    async with app.router.lifespan_context(app):
        ping_database(app.state.context.engine)
    from sqlalchemy import inspect

    assert "jobs" in inspect(app.state.context.engine).get_table_names()


@pytest.fixture
def anyio_backend() -> str:
    """Asyncio only."""
    return "asyncio"
