"""The waiting pre-flight child: one at a time, given to one request, never dead, gone with its parent."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from service.jobs import preflight_spare
from service.jobs.preflight_spare import keep_spare_ready, take_spare


@pytest.fixture(autouse=True)
def _no_spare_left() -> Iterator[None]:
    """Each test starts and ends with no child waiting."""
    preflight_spare._discard_waiting()
    yield
    preflight_spare._discard_waiting()


def test_one_child_waits_and_the_next_request_takes_it() -> None:
    """Asking twice keeps the one waiting child; taking it leaves none, and the next one is a new process."""
    keep_spare_ready()
    keep_spare_ready()
    assert len(preflight_spare._waiting) == 1
    waiting = preflight_spare._waiting[0]
    taken = take_spare()
    try:
        assert taken is waiting
        assert taken.proc.poll() is None
        assert not preflight_spare._waiting
        keep_spare_ready()
        assert preflight_spare._waiting[0].proc.pid != taken.proc.pid
    finally:
        taken.discard()
    assert not taken.root.exists()  # its folder goes with it


def test_a_child_that_died_waiting_is_not_handed_out() -> None:
    """A waiting child killed from outside is replaced by a live one when a request comes."""
    keep_spare_ready()
    dead = preflight_spare._waiting[0]
    os.killpg(dead.proc.pid, signal.SIGKILL)
    dead.proc.wait()
    taken = take_spare()
    try:
        assert taken is not dead
        assert taken.proc.poll() is None
        assert not dead.root.exists()
    finally:
        taken.discard()


def test_a_waiting_child_exits_when_its_parent_goes() -> None:
    """Its stdin closing (the API process gone) ends it cleanly once the engine has imported."""
    keep_spare_ready()
    child = preflight_spare._waiting.pop()
    try:
        assert child.proc.stdin is not None
        child.proc.stdin.close()
        assert child.proc.wait(timeout=120) == 0
    finally:
        child.discard()
