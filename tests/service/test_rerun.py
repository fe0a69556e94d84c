"""Reproducibility: every report carries a manifest, and a rerun on CPU reproduces its original exactly.

Jobs go through the real API (stored ids as JSON, or multipart files) and run in-process on the real
engine (the tiny MLP job: a second or two each); the rerun's report must say `reproduced` with kept
weights (masks for WeightMom-style magnitude pruning, kept channels for L1) and accuracies bit-equal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.tiny_job import CONFIG as TINY_CONFIG
from tests.integration.tiny_job import TinyJob, write_tiny_job
from tests.service.conftest import Api
from workers import runner
from workers.compression.config import JobConfig
from workers.rerun import compare_reports

pytestmark = pytest.mark.anyio

L1_CONFIG: dict[str, Any] = {**TINY_CONFIG, "method": "l1", "target": {"pruning_ratio": 0.5}, "options": {}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyJob:
    """The tiny MLP job's files (seeded random weights, Gaussian-blob data)."""
    return write_tiny_job(tmp_path_factory.mktemp("tiny"))


async def run(api: Api, job_id: str) -> dict[str, Any]:
    """Runs a queued job in this process on CPU and returns its report."""
    try:
        assert runner.run_job(job_id, settings=api.context.settings, actor="test-worker") == "succeeded"
    finally:
        runner.dispose_engines()
    response = await api.client.get(f"/jobs/{job_id}/report")
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


async def stored_job(api: Api, tiny: TinyJob, config: dict[str, Any]) -> str:
    """Stores the tiny job's files and submits a job naming them; returns its id."""
    ids = {}
    for kind, path in (("model", tiny.model), ("dataset", tiny.dataset)):
        response = await api.client.post(f"/{kind}s", files={"file": (path.name, path.read_bytes())})
        assert response.status_code in (200, 201), response.text
        ids[f"{kind}_id"] = response.json()["id"]
    response = await api.client.post("/jobs", json={**ids, "config": config})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def uploaded_job(api: Api, tiny: TinyJob, config: dict[str, Any]) -> str:
    """Submits a job with its files in the multipart body; returns its id."""
    model, dataset = tiny.model.read_bytes(), tiny.dataset.read_bytes()
    response = await api.submit(model=model, dataset=dataset, config=config)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize(("submit", "config"), [(stored_job, TINY_CONFIG), (uploaded_job, L1_CONFIG)],
                         ids=["magnitude-masks-stored-ids", "l1-kept-channels-uploaded-files"])
async def test_a_rerun_on_cpu_reproduces_kept_weights_and_accuracy_exactly(
    api: Api, tiny: TinyJob, submit: Any, config: dict[str, Any]
) -> None:
    """POST /jobs/{id}/rerun → 202; the rerun's report has rerun_of and reproduced all true, bit for bit."""
    original_id = await submit(api, tiny, config)
    original = await run(api, original_id)
    manifest = original["manifest"]
    assert manifest["determinism"]["bit_identical_expected"] is True
    assert manifest["inputs"]["model_sha256"] == original["inputs"]["model_sha256"]
    assert manifest["seeds"]["training"] == 0
    # The resolved config has every default filled in and is a config the API takes as it is.
    resolved = JobConfig.model_validate(manifest["config"])
    assert resolved.model_dump(mode="json") == manifest["config"]
    assert manifest["config"]["finetune"]["optimizer"] == "sgd"
    defaults = {"interval", "t0", "t_end"} if config["method"] == "magnitude" else {"coupled", "round_to"}
    assert set(manifest["config"]["options"]) >= defaults

    response = await api.client.post(f"/jobs/{original_id}/rerun")
    assert response.status_code == 202, response.text
    rerun_id = response.json()["id"]
    assert rerun_id != original_id
    assert response.json()["config"]["options"] == manifest["config"]["options"]
    rerun = await run(api, rerun_id)

    assert rerun["rerun_of"] == original_id
    assert rerun["reproduced"] == {"kept_equal": True, "accuracy_equal": True, "weights_equal": True,
                                   "differences": [], "environment_changes": []}
    assert rerun["layers"] == original["layers"]
    assert rerun["manifest"]["outcome"] == manifest["outcome"]
    for side in ("baseline", "pruned"):
        assert rerun[side]["accuracy"] == original[side]["accuracy"]
    job = (await api.client.get(f"/jobs/{rerun_id}")).json()
    assert job["metrics"]["reproduced"]["kept_equal"] is True
    assert job["rerun_of"] == original_id
    assert job["inputs"]["model_sha256"] == manifest["inputs"]["model_sha256"]
    # The rerun named stored inputs (promoted from an uploaded job's own files), so it needs no upload.
    row = api.context.jobs.get(tenant="public", job_id=rerun_id)
    assert row.model_id is not None
    assert row.dataset_id is not None
    assert row.rerun_of == original_id


def test_a_differing_rerun_says_what_differs(tmp_path: Path) -> None:
    """The comparison is exact and names what moved: a kept channel less, an accuracy off by one sample."""
    layers = [{"name": "fc1", "kind": "linear", "kept_channels": 150, "channels": 300}]
    original = {"layers": layers, "baseline": {"accuracy": 0.5, "ort_accuracy": 0.5},
                "pruned": {"accuracy": 0.75, "ort_accuracy": 0.75},
                "manifest": {"outcome": {"kept_sha256": "a", "weights_sha256": "w"}}}
    same = compare_reports(original, json.loads(json.dumps(original)))
    assert same == {"kept_equal": True, "accuracy_equal": True, "weights_equal": True, "differences": [],
                    "environment_changes": []}
    moved = json.loads(json.dumps(original))
    moved["layers"][0]["kept_channels"] = 149
    moved["pruned"]["accuracy"] = 0.7421875
    moved["manifest"]["outcome"] = {"kept_sha256": "b", "weights_sha256": "v"}
    moved["manifest"]["determinism"] = {"torch_threads": 4}
    verdict = compare_reports(original, moved)
    assert [verdict[key] for key in ("kept_equal", "accuracy_equal", "weights_equal")] == [False] * 3
    assert any(line.startswith("layer fc1") for line in verdict["differences"])
    assert "pruned.accuracy: 0.75 != 0.7421875" in verdict["differences"]
    assert verdict["environment_changes"] == ["determinism.torch_threads: None != 4"]


async def test_only_a_succeeded_job_can_be_rerun(api: Api, tiny: TinyJob) -> None:
    """A queued job has no report to compare with: 409 not_ready; another tenant's or a missing job: 404."""
    job_id = await uploaded_job(api, tiny, TINY_CONFIG)
    response = await api.client.post(f"/jobs/{job_id}/rerun")
    assert (response.status_code, response.json()["error"]["code"]) == (409, "not_ready")
    missing = await api.client.post("/jobs/00000000-0000-4000-8000-000000000000/rerun")
    assert missing.status_code == 404
