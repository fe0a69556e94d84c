"""Fixtures of the chaos suite: its own PostgreSQL and Redis, the job it runs, and the trial record.

`--trials N` repeats every scenario N times (default 1: the CI's short run); `scripts/chaos_report.py` runs
the full count. Each trial's outcome (passed, job lost, duplicate effects, recovery time) is recorded and
summed up per scenario at the end of the session, and appended as JSON lines to the file named by
`SECATEUR_CHAOS_RESULTS` when that is set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.chaos.cluster import Cluster
from tests.chaos.report import Trial, append, table
from tests.chaos.servers import OwnPostgres, OwnRedis, postgres_bin
from tests.integration.conftest import unavailable
from tests.integration.tiny_job import CONFIG, TinyJob, write_tiny_job

# ~1 s epochs on one CPU thread (8192 samples of 16x16, batch 32): long enough to be interrupted mid-run.
CHAOS_CONFIG = {**CONFIG, "finetune": {"epochs": 6, "batch_size": 32, "lr": 0.05}, "options": {"interval": 8}}


_TRIALS: list[Trial] = []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrizes every test that takes `trial` over range(--trials)."""
    if "trial" in metafunc.fixturenames:
        count = int(metafunc.config.getoption("--trials"))
        metafunc.parametrize("trial", range(count), ids=[f"trial{i}" for i in range(count)])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, object, object]:
    """Keeps each phase's report on the test item, so the trial record knows whether the test passed."""
    report = yield
    setattr(item, f"report_{call.when}", report)
    return report


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[Trial]:
    """The trial's record, filled in by the test; stored with the test's outcome at teardown."""
    trial = Trial(scenario=request.node.originalname, trial=request.node.callspec.params.get("trial", 0))
    yield trial
    call = getattr(request.node, "report_call", None)
    trial.passed = bool(call is not None and call.passed)
    _TRIALS.append(trial)
    results = os.environ.get("SECATEUR_CHAOS_RESULTS")
    if results:
        append(Path(results), trial)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Prints the reliability table of the trials that ran."""
    if not _TRIALS:
        return
    terminalreporter.section("chaos: reliability")
    for line in table(_TRIALS):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def own_postgres() -> Iterator[OwnPostgres]:
    """A PostgreSQL server of this suite's own (initdb into a temp folder, a free port)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        unavailable("PostgreSQL server binaries (initdb, pg_ctl)", "not installed")
    server = OwnPostgres(bin_dir).init()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    """A redis-server of this suite's own (no persistence, a free port)."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server", "not installed")
    server = OwnRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chaos_job(tmp_path_factory: pytest.TempPathFactory) -> TinyJob:
    """The job every trial runs: the zoo MLP on 8192 blobs of 16x16, six ~1 s epochs."""
    return write_tiny_job(tmp_path_factory.mktemp("chaos-job"), train=8192, shape=(1, 16, 16),
                          config=CHAOS_CONFIG)


@pytest.fixture
def cluster(own_postgres: OwnPostgres, own_redis: OwnRedis, chaos_job: TinyJob, tmp_path: Path
            ) -> Iterator[Cluster]:
    """A fresh deployment for one trial (its own database); every process it started is stopped after."""
    own_postgres.start_if_stopped()
    if own_redis.proc is None:
        own_redis.start()
    deployment = Cluster(own_postgres.url, own_redis.url, tmp_path, chaos_job)
    try:
        yield deployment
    finally:
        deployment.close()
