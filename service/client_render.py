"""How the command-line client shows jobs and reports to a person: one-line states, a live bar, a summary.

Only presentation lives here (no HTTP): `client_cli.py` decides what to print, this module how.
"""

from __future__ import annotations

import shutil
from typing import IO, Any

from service.client import Job

__all__ = ["ProgressView", "describe", "headline", "report_table"]

_BAR_WIDTH = 24
# (report key, label, format) of the figures a summary compares before and after pruning.
_FIGURES = (("accuracy", "accuracy", "{:.2%}"), ("params", "params", "{:,}"), ("flops", "FLOPs", "{:,}"),
            ("onnx_bytes", "ONNX bytes", "{:,}"), ("onnx_zstd_bytes", "ONNX zstd bytes", "{:,}"))


def _duration(seconds: float) -> str:
    """Formats seconds compactly: 42s, 3m05s, 1h02m."""
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _live_metrics(job: Job) -> str:
    """The running job's latest training metrics (loss, accuracy, ...) as `name value` pairs, at most four."""
    source = (job.raw.get("progress") or {}).get("metrics") or {}
    scalars = [(k, v) for k, v in source.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return "  ".join(f"{k} {v:.4g}" for k, v in scalars[:4])


def describe(job: Job, *, bar: bool) -> str:
    """One line for a job's state: stage, [bar,] percent, epoch/epochs, metrics, ETA."""
    parts = [job.status if job.status != "running" else (job.stage or "running")]
    p = job.progress
    if p.fraction is not None:
        fraction = min(max(p.fraction, 0.0), 1.0)
        if bar:
            filled = int(fraction * _BAR_WIDTH)
            parts.append("[" + "#" * filled + "-" * (_BAR_WIDTH - filled) + "]")
        parts.append(f"{fraction:4.0%}")
    if p.epochs:
        parts.append(f"epoch {p.epoch or 0}/{p.epochs}")
    metrics = _live_metrics(job)
    if metrics:
        parts.append(metrics)
    if p.eta_s is not None and not job.terminal:
        parts.append(f"ETA {_duration(p.eta_s)}")
    return "  ".join(parts)


class ProgressView:
    """Shows a job's progress: a bar redrawn in place on a terminal, one plain line per change otherwise."""

    def __init__(self, stream: IO[str]) -> None:
        """Writes to `stream`; draws a live bar only when it is a terminal."""
        self.stream = stream
        self.tty = stream.isatty()
        self._last_key: tuple[Any, ...] | None = None

    def update(self, job: Job) -> None:
        """Renders one new job state (the `on_update` callback of `SecateurClient.wait`)."""
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r" + describe(job, bar=True)[:width].ljust(width))
            if job.terminal:
                self.stream.write("\n")
        else:
            # Plain logs get a line per status, stage or epoch change, not one per poll.
            key = (job.status, job.stage, job.progress.epoch)
            if key == self._last_key:
                return
            self._last_key = key
            self.stream.write(describe(job, bar=False) + "\n")
        self.stream.flush()


def _pairs(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, before, after) for each figure both sides of a report (or a job's metrics) carry."""
    base, pruned = report.get("baseline") or {}, report.get("pruned") or {}
    rows = []
    for key, label, fmt in _FIGURES:
        before, after = base.get(key), pruned.get(key)
        if isinstance(before, int | float) and isinstance(after, int | float):
            rows.append((label, fmt.format(before), fmt.format(after)))
    return rows


def headline(metrics: dict[str, Any]) -> str:
    """`: accuracy a -> b, params p -> q, ...` from a finished job's metrics (empty when it has none)."""
    parts = [f"{label} {before} -> {after}" for label, before, after in _pairs(metrics)
             if label in ("accuracy", "params", "ONNX zstd bytes")]
    return ": " + ", ".join(parts) if parts else ""


def report_table(report: dict[str, Any]) -> str:
    """A report as a before/after table with latency and the ONNX verification verdict."""
    rows = _pairs(report)
    base, pruned = report.get("baseline") or {}, report.get("pruned") or {}
    for batch in ("b1", "b64"):
        before, after = (base.get("latency_ms") or {}).get(batch), (pruned.get("latency_ms") or {}).get(batch)
        if isinstance(before, int | float) and isinstance(after, int | float):
            rows.append((f"latency {batch} (ms)", f"{before:.3g}", f"{after:.3g}"))
    lines = [f"{'':<18}{'baseline':>14}{'pruned':>14}"]
    lines += [f"{label:<18}{before:>14}{after:>14}" for label, before, after in rows]
    verification = report.get("verification") or {}
    if verification:
        verdict = "passed" if verification.get("passed") else "FAILED"
        lines.append(f"ONNX check: {verdict} (max abs diff {verification.get('max_abs_diff')})")
    return "\n".join(lines)
