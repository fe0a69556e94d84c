"""Alembic's scripts as a package, so the wheel ships them and `secateur migrate` finds them anywhere."""
