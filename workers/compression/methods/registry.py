"""The method registry: names → PruningMethod implementations, imported lazily by name.

Method modules call `register(...)` at import time. `get` imports the module that provides a known
method on first use, so importing the registry stays cheap and a missing module is a clear error.
"""

from __future__ import annotations

import importlib
from typing import TypeVar, cast

from workers.compression.errors import InvalidConfig
from workers.compression.methods.base import PruningMethod

__all__ = ["get", "names", "register"]

# Which module provides each method the product knows about (see config.METHOD_OPTIONS).
PROVIDERS: dict[str, str] = {
    "magnitude": "workers.compression.methods.unstructured",
    "weightmom": "workers.compression.methods.unstructured",
    "l1": "workers.compression.methods.structured",
    "tpp": "workers.compression.methods.tpp",
}

_METHODS: dict[str, PruningMethod] = {}

M = TypeVar("M")


def register(method: M) -> M:
    """Registers a method instance (or a class with a no-argument constructor, so it works as a decorator)."""
    instance = method() if isinstance(method, type) else method
    name = getattr(instance, "name", None)
    if not isinstance(name, str) or not callable(getattr(instance, "run", None)):
        raise TypeError(f"{method!r} is not a PruningMethod: it needs a `name` and a `run(ctx)`")
    _METHODS[name] = cast(PruningMethod, instance)
    return method


def _import_provider(module: str) -> bool:
    """Imports a provider module; returns False only when that very module does not exist."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise  # the module exists but one of its own imports is missing: a real bug, keep it loud
        return False
    return True


def get(name: str) -> PruningMethod:
    """Returns the registered method `name`; raises InvalidConfig for an unknown or unavailable one."""
    if name not in _METHODS:
        module = PROVIDERS.get(name)
        if module is None:
            raise InvalidConfig(f"unknown method {name!r}; choose one of {sorted(PROVIDERS)}")
        if not _import_provider(module) or name not in _METHODS:
            raise InvalidConfig(
                f"method {name!r} is not available in this installation ({module} does not provide it)"
            )
    return _METHODS[name]


def names() -> list[str]:
    """Returns the names of every method available now (importing every provider module that exists)."""
    for module in sorted(set(PROVIDERS.values())):
        _import_provider(module)
    return sorted(_METHODS)
