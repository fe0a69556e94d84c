"""`secateur sweep` and the client's sweep calls against a real server; a fake worker ends the points."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.client_cli import main
from tests.service.conftest import npz_dataset, safetensors_model
from tests.service.live import Live, sample_report, serve

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """A server with room for a sweep's jobs, the CLI pointed at it."""
    with serve(tmp_path / "server", validate_uploads=False, max_active_jobs_per_tenant=8) as server:
        monkeypatch.setenv("SECATEUR_URL", server.url)
        monkeypatch.delenv("SECATEUR_API_KEY", raising=False)
        yield server


def stored(live: Live, kind: str, data: bytes) -> str:
    """Uploads a file to `/models` or `/datasets`; returns its id."""
    response = httpx.post(f"{live.url}/{kind}", files={"file": ("f", data)})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def succeed(live: Live, job_id: str, accuracy: float, flops: int) -> None:
    """Ends a point as the worker would, with its own accuracy and FLOPs."""
    report = sample_report()
    report["pruned"] = {**report["pruned"], "accuracy": accuracy, "flops": flops}
    live.worker.succeed(job_id, live.worker.claim(job_id), report, {"model.onnx": b"onnx"})


def test_sweep_starts_shows_the_front_and_deletes(live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    model, dataset = stored(live, "models", safetensors_model()), stored(live, "datasets", npz_dataset())
    args = ["sweep", "--model-id", model, "--dataset-id", dataset, "--method", "l1", "--architecture", "mlp",
            "--epochs", "1", "--ratios", "0.3,0.5,0.7"]
    assert main(args) == 0
    sweep_id = capsys.readouterr().out.strip()

    assert main(["sweep", "status", sweep_id, "--json"]) == 0
    sweep = json.loads(capsys.readouterr().out)
    assert [p["target"] for p in sweep["points"]] == [{"pruning_ratio": r} for r in (0.3, 0.5, 0.7)]
    jobs = [p["job_id"] for p in sweep["points"]]
    for job_id, (accuracy, flops) in zip(jobs, [(0.9, 30_000_000), (0.8, 35_000_000), (0.7, 10_000_000)],
                                         strict=True):
        succeed(live, job_id, accuracy, flops)

    assert main(["sweep", "status", sweep_id, "--wait"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == f"sweep {sweep_id}  succeeded"
    rows = {line.split()[-1]: line for line in table if line.endswith(tuple(jobs))}
    assert [rows[j].startswith("*") for j in jobs] == [True, False, True]  # 0.5 is worse and dearer than 0.3
    assert "pruning_ratio 0.5" in rows[jobs[1]]
    assert "80.00%" in rows[jobs[1]]
    assert any(line.strip().startswith("dense baseline") for line in table)

    assert main(["sweep", "list"]) == 0
    assert f"{sweep_id}" in capsys.readouterr().out
    assert main(["sweep", "cancel", sweep_id]) == 1
    assert "already_finished" in capsys.readouterr().err
    assert main(["sweep", "delete", sweep_id]) == 0
    assert httpx.get(f"{live.url}/sweeps/{sweep_id}").status_code == 404


def test_sweep_without_targets_or_ids_says_what_is_missing(
    live: Live, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sweep", "--model-id", "m", "--dataset-id", "d", "--method", "l1"]) == 1
    assert "--ratios" in capsys.readouterr().err
    assert main(["sweep", "--ratios", "0.5", "--method", "l1"]) == 1
    assert "--model-id" in capsys.readouterr().err
    assert main(["sweep", "status"]) == 1
    assert "needs a sweep id" in capsys.readouterr().err
