"""Alembic on PostgreSQL: the same round trip and drift check as on SQLite, on a fresh database."""

from __future__ import annotations

import pytest

from tests.service.migration_checks import check_round_trip_and_no_drift

pytestmark = pytest.mark.integration


def test_postgres_upgrade_downgrade_upgrade_without_drift(postgres_url: str) -> None:
    check_round_trip_and_no_drift(postgres_url)
