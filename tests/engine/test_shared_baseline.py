"""The dense baseline measured once for jobs that share it (a sweep's points), and reused by the others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.tiny_job import write_tiny_job
from workers.compression import pipeline
from workers.compression.config import JobConfig
from workers.compression.export import verify


class DictCache:
    """A BaselineCache in memory: what the service keeps on the sweep's row."""

    def __init__(self, record: dict[str, Any] | None = None) -> None:
        self.record, self.puts = record, 0

    def get(self) -> dict[str, Any] | None:
        """Returns the stored record."""
        return self.record

    def put(self, record: dict[str, Any]) -> None:
        """Keeps the first record offered, as the sweep's conditional UPDATE does."""
        self.puts += 1
        if self.record is None:
            self.record = json.loads(json.dumps(record))  # it must survive a JSON column


def run(tmp_path: Path, name: str, ratio: float, cache: DictCache, monkeypatch: pytest.MonkeyPatch
        ) -> tuple[dict[str, Any], int]:
    """Compresses the tiny job at `ratio`; returns its report and how many models `verify` was run on."""
    job = write_tiny_job(tmp_path / "inputs")
    raw = json.loads(job.config) | {"method": "l1", "target": {"pruning_ratio": ratio}, "options": {}}
    calls = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        """Counts one ONNX verification."""
        calls.append(1)
        return verify(*args, **kwargs)

    monkeypatch.setattr(pipeline, "verify", counted)
    config = JobConfig.model_validate(raw)
    result = pipeline.compress(model_path=job.model, dataset_path=job.dataset, config=config,
                               out_dir=tmp_path / name, baseline_cache=cache)
    return result.report, len(calls)


def test_a_second_point_reuses_the_first_points_baseline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = DictCache()
    first, first_verified = run(tmp_path, "a", 0.3, cache, monkeypatch)
    second, second_verified = run(tmp_path, "b", 0.6, cache, monkeypatch)
    assert (first_verified, second_verified) == (2, 1)  # dense + pruned, then the pruned model only
    assert cache.puts == 1
    without_latency = [{k: v for k, v in r["baseline"].items() if k != "latency_ms"} for r in (first, second)]
    assert without_latency[0] == without_latency[1]
    assert first["verification"]["baseline"] == second["verification"]["baseline"]
    assert second["pruned"]["flops"] < first["pruned"]["flops"] < first["baseline"]["flops"]
    assert set(second["baseline"]["latency_ms"]) == {"b1", "b64"}  # latency is measured by every job


def test_a_record_made_from_other_inputs_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = DictCache()
    run(tmp_path, "a", 0.3, cache, monkeypatch)
    assert cache.record is not None
    stale = DictCache({**cache.record, "key": "0" * 64})  # say, another dataset
    _, verified = run(tmp_path, "b", 0.3, stale, monkeypatch)
    assert verified == 2
