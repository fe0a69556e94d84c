"""The reliability table: one row per chaos scenario (trials, passed, jobs lost, duplicates, recovery)."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Trial", "append", "read", "table"]


@dataclass
class Trial:
    """One trial's line in the reliability table."""

    scenario: str
    trial: int
    passed: bool = False
    lost: int = 0
    duplicates: int = 0
    recovery_s: float | None = None


def append(path: Path, trial: Trial) -> None:
    """Appends a trial to a JSON-lines results file."""
    with path.open("a") as out:
        out.write(json.dumps(asdict(trial)) + "\n")


def read(path: Path) -> list[Trial]:
    """Reads the trials of a JSON-lines results file."""
    return [Trial(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def table(trials: list[Trial]) -> list[str]:
    """The reliability table (markdown), one row per scenario in the order they ran."""
    rows = ["| scenario | trials | passed | jobs lost | duplicate effects | median recovery (s) |",
            "|---|---|---|---|---|---|"]
    for scenario in dict.fromkeys(t.scenario for t in trials):
        mine = [t for t in trials if t.scenario == scenario]
        times = [t.recovery_s for t in mine if t.recovery_s is not None]
        median = f"{statistics.median(times):.1f}" if times else "n/a"
        passed, lost = sum(t.passed for t in mine), sum(t.lost for t in mine)
        duplicates = sum(t.duplicates for t in mine)
        rows.append(f"| {scenario} | {len(mine)} | {passed} | {lost} | {duplicates} | {median} |")
    return rows
