"""Aggregation and markdown rendering shared by the benchmark tables."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["by", "by_scale", "cell", "markdown", "mean_std", "pct", "record_results"]

Record = dict[str, Any]


def by(records: Iterable[Record], key: Callable[[Record], Hashable]) -> dict[Any, list[Record]]:
    """Groups records by `key`, keeping first-seen order."""
    groups: dict[Any, list[Record]] = defaultdict(list)
    for record in records:
        groups[key(record)].append(record)
    return dict(groups)


def by_scale(records: Iterable[Record]) -> list[list[Record]]:
    """Splits records by their run scale (architecture, data, epochs…), the most runs first: runs of
    different scales never share a table cell."""
    return sorted(by(records, lambda r: r["scale"]).values(), key=len, reverse=True)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Returns the mean and the sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: Sequence[float | None], *, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    """Formats `mean ± std` of the non-missing values (times `scale`), or an em dash when there are none."""
    present = [v * scale for v in values if v is not None]
    if not present:
        return "—"
    mean, std = mean_std(present)
    return f"{mean:.{digits}f}{unit}" if len(present) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}{unit}"


def pct(values: Sequence[float | None]) -> str:
    """Formats accuracies (fractions) as percent, mean ± std."""
    return cell(values, scale=100.0, digits=2)


def markdown(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Renders a markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def record_results(results: Path, bench: str, records: Sequence[Record],
                   table: Callable[[Sequence[Record]], str]) -> None:
    """Appends a run's records to `<bench>.jsonl`, rewrites `<bench>.md` from every run kept there, and
    prints this run's table."""
    jsonl = results / f"{bench}.jsonl"
    with jsonl.open("a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    every = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    (results / f"{bench}.md").write_text(table(every))
    print(table(records))
