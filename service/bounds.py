"""Fixed bounds on what a client can make the service hold or send back: text, and JSON documents.

Text: every error message (built here or by the engine, answered or stored on a job row) and every file
name quoted to a client goes through `bounded`, so a 64 MB member name costs the sender, not every later
`GET /jobs`. JSON: `load_json` parses untrusted documents with a nesting depth, a digit count per number
and no `NaN`/`Infinity`, so a hostile config is a 4xx before any recursion or big-integer arithmetic.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_MESSAGE_CHARS",
    "MAX_NAME_CHARS",
    "MAX_NUMBER_CHARS",
    "JsonRefused",
    "bounded",
    "bounded_strings",
    "load_json",
]

MAX_MESSAGE_CHARS = 1000  # an error message, whole (answered, logged or stored on the job row)
MAX_NAME_CHARS = 200  # one file, member or class name quoted to a client
MAX_JSON_DEPTH = 32  # nesting of objects and arrays in a client's JSON (a job config needs 4)
MAX_NUMBER_CHARS = 40  # digits (and sign, point, exponent) of one JSON number: beyond any float's need


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Returns `text` cut to at most `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    suffix = f"… [cut: {len(text)} characters in all]"
    return text[:max(0, limit - len(suffix))] + suffix


def bounded_strings(value: Any, limit: int = MAX_NAME_CHARS) -> Any:
    """Returns a JSON-like value with every string (dict keys too) cut by `bounded` to `limit`."""
    if isinstance(value, str):
        return bounded(value, limit)
    if isinstance(value, dict):
        return {bounded_strings(k, limit): bounded_strings(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bounded_strings(v, limit) for v in value]
    return value


class JsonRefused(ValueError):
    """A JSON document that is malformed or past a bound (depth, number size, a non-finite number)."""


def _depth(text: str) -> int:
    """Returns the deepest nesting of objects/arrays in `text`, brackets inside strings not counted."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _integer(literal: str) -> int:
    """Parses one JSON integer, refusing more digits than any real setting needs."""
    if len(literal) > MAX_NUMBER_CHARS:
        raise JsonRefused(f"a number has {len(literal)} digits; at most {MAX_NUMBER_CHARS} are accepted")
    return int(literal)


def _float(literal: str) -> float:
    """Parses one JSON real number, refusing huge literals and values that overflow to infinity."""
    if len(literal) > MAX_NUMBER_CHARS:
        raise JsonRefused(f"a number has {len(literal)} characters; at most {MAX_NUMBER_CHARS} are accepted")
    value = float(literal)
    if not math.isfinite(value):
        raise JsonRefused(f"the number {literal} is out of range (not a finite 64-bit float)")
    return value


def _constant(name: str) -> float:
    """Refuses the non-standard literals Python's json would read: NaN, Infinity, -Infinity."""
    raise JsonRefused(f"{name} is not a number JSON allows; send a finite number")


def load_json(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parses untrusted JSON; JsonRefused (with a reason a client can act on) for anything past a bound."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise JsonRefused("the JSON is not UTF-8 text") from None
    depth = _depth(text)
    if depth > max_depth:
        raise JsonRefused(f"the JSON nests {depth} levels deep; at most {max_depth} are accepted")
    try:
        return json.loads(text, parse_int=_integer, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise JsonRefused(f"not valid JSON: {bounded(str(exc), 200)}") from None
