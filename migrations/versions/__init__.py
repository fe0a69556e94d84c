"""Revision scripts (Alembic skips this file); a package so the wheel carries every revision."""
