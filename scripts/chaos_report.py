"""Runs the chaos suite's full count and prints the README's reliability table.

    .venv/bin/python scripts/chaos_report.py                       # 20 trials of 1, 2, 5; 5 of the others
    .venv/bin/python scripts/chaos_report.py --trials 20 --slow-trials 20

Scenarios 1 (kill -9), 2 (SIGSTOP) and 5 (duplicate wake-ups) run `--trials` times; the slower ones
(Redis and PostgreSQL restarts, the poison job, cancel, SIGTERM) `--slow-trials` times. Every trial is a
real deployment (workers, API, the suite's own PostgreSQL and Redis); see tests/chaos/. The table counts
per scenario the trials, those passed, jobs lost, duplicate effects and the median recovery time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.chaos.report import read, table  # noqa: E402  (the repo root is put on the path just above)

FAST = "kill9 or sigstop or wakeup"  # pytest -k expressions over tests/chaos/test_chaos.py
SLOW = "redis or postgres or poison or cancel or sigterm"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs both groups of scenarios, then prints the table; exits 1 if any trial failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials of scenarios 1, 2 and 5 (default 20)")
    parser.add_argument("--slow-trials", type=int, default=5, help="trials of the others (default 5)")
    parser.add_argument("--results", type=Path, default=None, help="JSON-lines file to keep (default: temp)")
    opts = parser.parse_args(argv)
    results = opts.results or Path(tempfile.mkdtemp(prefix="secateur-chaos-")) / "trials.jsonl"
    results.unlink(missing_ok=True)
    env = {**os.environ, "SECATEUR_CHAOS_RESULTS": str(results), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    for selection, trials in ((FAST, opts.trials), (SLOW, opts.slow_trials)):
        if trials > 0:
            command = [sys.executable, "-m", "pytest", "tests/chaos", "-m", "chaos", "-k", selection,
                       f"--trials={trials}", "-q", "-p", "no:cacheprovider"]
            print("$", " ".join(command), flush=True)
            subprocess.run(command, cwd=REPO, env=env, check=False)
    trials_run = read(results) if results.exists() else []
    print(f"\n$ python scripts/chaos_report.py {' '.join(argv or sys.argv[1:])}\n")
    print("\n".join(table(trials_run)))
    print(f"\nresults: {results}")
    return 0 if trials_run and all(t.passed for t in trials_run) else 1


if __name__ == "__main__":
    raise SystemExit(main())
