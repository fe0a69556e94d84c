"""The job state machine, in one place: which transitions exist and which states are final."""

from __future__ import annotations

__all__ = ["ACTIVE", "TERMINAL", "TRANSITIONS", "can_transition", "is_terminal", "sources_of"]

TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
# States in which a worker holds the lease and its fenced writes are accepted.
ACTIVE: frozenset[str] = frozenset({"running", "cancelling"})

TRANSITIONS: dict[str, frozenset[str]] = {
    # queued → cancelled: a cancel before any worker claimed it; → failed: the reaper gives up.
    "queued": frozenset({"running", "cancelled", "failed"}),
    # running → queued: released (SIGTERM) or reaped after a lost heartbeat, to be claimed again.
    "running": frozenset({"cancelling", "queued", "succeeded", "failed", "cancelled"}),
    # A cancel races the end of the work: whatever the worker reaches first is final.
    "cancelling": frozenset({"succeeded", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


def is_terminal(status: str) -> bool:
    """Tells whether a status is final (terminal states never change)."""
    return status in TERMINAL


def can_transition(current: str, new: str) -> bool:
    """Tells whether a job in `current` may move to `new`."""
    return new in TRANSITIONS.get(current, frozenset())


def sources_of(new: str) -> frozenset[str]:
    """Returns every status from which `new` can be reached (the WHERE clause of a conditional UPDATE)."""
    return frozenset(state for state, targets in TRANSITIONS.items() if new in targets)
