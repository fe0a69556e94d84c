"""List pages bounded in bytes as well as in items: stored text can never make a list response huge."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

__all__ = ["fit_in_bytes"]


def fit_in_bytes(items: Sequence[BaseModel], max_bytes: int) -> int:
    """Returns how many of `items`, from the first, fit in `max_bytes` of JSON (always at least one)."""
    used = 0
    for count, item in enumerate(items):
        used += len(item.model_dump_json()) + 1  # and a comma
        if used > max_bytes and count > 0:
            return count
    return len(items)
