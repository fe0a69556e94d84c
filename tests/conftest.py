"""Suite-wide test settings: one torch thread per process (20x faster than two on 2-core machines),
derandomized Hypothesis in CI."""

import os

import pytest
from hypothesis import settings

# CI replays the same examples every run (a red build is reproducible); local runs keep exploring.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Every API a test starts would keep a pre-flight child importing torch (~6 CPU s) that few tests use; the
# pre-flight tests turn it back on (it is on by default in the product).
os.environ.setdefault("SECATEUR_PREFLIGHT_SPARE", "false")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Adds `--trials` (repetitions of each chaos scenario) at the root, where `pytest -m chaos` sees it."""
    parser.addoption("--trials", type=int, default=1, help="repetitions of every chaos scenario (default 1)")
