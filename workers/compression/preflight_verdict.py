"""What a job records about its own pre-flight, and which failures pre-flight should have seen (no torch:
the service's metrics import this).

Every job runs the engine's pre-flight on its inputs before any training (workers/runner.py) and records an
event: `preflight_passed`, or `preflight_refused` (the job then fails at once with pre-flight's code). A job
that passed and still failed with one of PREFLIGHT_VISIBLE's codes is a miss of pre-flight's: the API
counts them (`secateur_jobs_failed_after_preflight`), and the count should stay at zero.
"""

from __future__ import annotations

__all__ = ["PASSED", "PREFLIGHT_VISIBLE", "REFUSED"]

PASSED, REFUSED = "preflight_passed", "preflight_refused"
# The codes of failures that pre-flight's checks cover: loading and fitting the inputs, the group analysis,
# the target's reach, the dense ONNX export and its parity, the model's cost. Not training divergence,
# out-of-memory, lost workers, timeouts or cancellation.
PREFLIGHT_VISIBLE: tuple[str, ...] = ("invalid_model", "invalid_dataset", "invalid_config", "unsupported_op",
                                      "unsupported_model_format", "export_mismatch", "model_too_costly")
