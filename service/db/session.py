"""Engines and sessions with timeouts, so a dead database is a fast error and never a hung request."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Update, create_engine, event, make_url, text
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["make_engine", "make_session_factory", "normalize_url", "ping_database", "rows_changed",
           "session_scope"]


def normalize_url(url: str) -> str:
    """Maps `postgresql://` / `postgres://` to the installed psycopg 3 driver; other URLs pass through."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, connect_timeout_s: float = 5.0, statement_timeout_s: float = 15.0) -> Engine:
    """Creates an engine: SQLite with WAL and a busy timeout, PostgreSQL with connect/statement timeouts."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": statement_timeout_s, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {
        "connect_timeout": max(1, round(connect_timeout_s)),
        "options": f"-c statement_timeout={int(statement_timeout_s * 1000)}"
                   f" -c lock_timeout={int(statement_timeout_s * 1000)}",
    }
    # pool_pre_ping: a connection broken by a database restart is replaced instead of failing a request.
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True, pool_timeout=connect_timeout_s)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Turns on WAL (readers never block the writer) and foreign keys on every new SQLite connection."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Returns the session factory; objects stay readable after commit (no lazy reload)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Opens one transaction: commits when the block ends normally, rolls back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping_database(engine: Engine) -> None:
    """Runs `SELECT 1`; raises when the database cannot answer (readiness probe)."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def rows_changed(session: Session, stmt: Update) -> int:
    """Runs a conditional UPDATE without touching loaded objects; returns how many rows it changed."""
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount
