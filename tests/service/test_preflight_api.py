"""POST /preflight answers from the engine in the upload sandbox; jobs' own pre-flight verdicts count."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from service.client import ApiError, SecateurClient
from service.db.session import session_scope
from service.jobs import repository
from tests.engine.model_files import export_onnx
from tests.service.conftest import npz_dataset, safetensors_model
from tests.service.live import FakeWorker, serve
from workers.compression.preflight_verdict import PASSED

pytestmark = pytest.mark.anyio

CONFIG = {"method": "l1", "architecture": "mlp", "target": {"pruning_ratio": 0.5}, "finetune": {"epochs": 2}}


async def test_preflight_answers_groups_targets_roundtrip_estimate(make_api: Callable[..., Any]) -> None:
    """The mlp and its dataset: hidden layers prunable, each target predicted, one the method cannot take
    named as a problem; answered by the waiting child the API keeps (the product's default)."""
    async with make_api(preflight_spare=True) as api:
        files = {"model": ("m.safetensors", safetensors_model()), "dataset": ("d.npz", npz_dataset())}
        targets = [{"flops_reduction": 1.5}, {"sparsity": 0.5}]
        response = await api.client.post("/preflight", files=files, timeout=180,
                                          data={"config": json.dumps(CONFIG), "targets": json.dumps(targets)})
        assert response.status_code == 200, response.text
        answer = response.json()
    assert (answer["input_shape"], answer["num_classes"], answer["dataset_checked"]) == ([3], 2, True)
    assert [g["root"] for g in answer["groups"]] == ["fc1", "fc2"]
    assert {e["layer"] for e in answer["excluded"]} == {"fc3"}  # the classifier
    ratio, reachable, unreachable = answer["targets"]
    assert ratio["reachable"]
    assert ratio["params"] < answer["params"]
    assert ratio["flops"] < answer["flops"]
    assert reachable["reachable"]
    assert answer["flops"] / reachable["flops"] >= 1.5
    assert not unreachable["reachable"]
    assert "takes a target of" in unreachable["reason"]
    assert answer["ok"] is False
    assert [p["code"] for p in answer["problems"]] == ["invalid_config"]
    assert answer["onnx_roundtrip"]["passed"]
    assert answer["onnx_roundtrip"]["max_abs_diff"] < 1e-4
    assert answer["estimate_s"] > 0
    assert not api.stored_files()  # nothing stored
    assert api.job_count() == 0  # nothing queued


async def test_preflight_refuses_a_model_no_job_could_prune(make_api: Callable[..., Any],
                                                            tmp_path: Path) -> None:
    """A classifier-only ONNX with l1: the typed 422 a job fails with (tests/e2e/test_webhooks_preflight.py
    shows the job's refusal); a bad request is refused before any child runs."""
    model = export_onnx(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), tmp_path / "c.onnx", (3, 2, 2))
    config = {"method": "l1", "target": {"pruning_ratio": 0.5}}
    async with make_api() as api:
        response = await api.client.post("/preflight", timeout=180, data={"config": json.dumps(config)},
                                         files={"model": ("c.onnx", io.BytesIO(model.read_bytes()))})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_config"
        assert "no channel group that l1 can prune" in error["message"]
        missing = await api.client.post("/preflight", files={"model": ("c.onnx", b"x")})
        assert missing.status_code == 422
        assert missing.json()["error"]["code"] == "missing_part"
        unknown = await api.client.post("/preflight", json={"model_id": "nope", "config": config})
        assert unknown.status_code == 404


async def test_metrics_count_jobs_that_failed_after_passing_preflight(make_api: Callable[..., Any]) -> None:
    """A job that passed its pre-flight and failed with a code pre-flight covers is a counted miss."""
    async with make_api() as api:
        worker = FakeWorker(api.context)
        missed, fine = worker.insert(), worker.insert()
        for job_id, code in ((missed, "invalid_config"), (fine, "out_of_memory")):
            epoch = worker.claim(job_id)
            with session_scope(api.context.jobs.sessions) as session:
                repository.record_event(session, job_id=job_id, epoch=epoch, kind=PASSED, actor="t")
            worker.finish(job_id, epoch, "failed", error_code=code, error_message="x")
        text = (await api.client.get("/metrics")).text
    assert 'secateur_jobs_preflight_total{result="passed"} 2.0' in text
    assert 'secateur_jobs_failed_after_preflight_total{code="invalid_config"} 1.0' in text
    assert 'secateur_jobs_failed_after_preflight_total{code="export_mismatch"} 0.0' in text


def test_the_client_preflights_a_stored_model_by_id(tmp_path: Path) -> None:
    """SecateurClient.preflight with a stored model's id: JSON to the route, the engine's refusal back."""
    model = export_onnx(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), tmp_path / "c.onnx", (3, 2, 2))
    with serve(tmp_path / "server", validate_uploads=False) as live, SecateurClient(live.url) as client:
        stored = client.upload("model", model)
        with pytest.raises(ApiError) as refused:
            client.preflight(stored.id, {"method": "tpp", "target": {"pruning_ratio": 0.5}})
    assert (refused.value.status, refused.value.code) == (422, "invalid_config")
    assert "no channel group that tpp can prune" in refused.value.message
