"""The client and CLI with stored inputs: `secateur upload`, `inputs`, `submit --model <id|path>`, `rerun`.

Against a real server (no worker runs: jobs stay queued, which is what the refusals need).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import SecateurClient, is_input_id
from service.client_cli import main
from tests.service.conftest import npz_dataset, safetensors_model
from tests.service.live import TENANT, Live, serve

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server for the module; uploads are sniffed, not sandboxed (no model is trained here)."""
    with serve(tmp_path_factory.mktemp("server"), validate_uploads=False) as server:
        yield server


@pytest.fixture
def files(tmp_path: Path, live: Live, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A tiny model and dataset on disk, the CLI pointed at the server."""
    monkeypatch.setenv("SECATEUR_URL", live.url)
    model, dataset = tmp_path / "model.safetensors", tmp_path / "data.npz"
    model.write_bytes(safetensors_model())
    dataset.write_bytes(npz_dataset())
    return model, dataset


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Runs one CLI command; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_upload_prints_one_id_per_content_and_lists_it(files: tuple[Path, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`upload model FILE` prints the id; the same bytes again print the same id and say so."""
    model, dataset = files
    code, out, _ = run(capsys, "upload", "model", str(model))
    model_id = out.strip()
    assert (code, is_input_id(model_id)) == (0, True)
    code, out, err = run(capsys, "upload", "model", str(model))
    assert (code, out.strip()) == (0, model_id)
    assert "already stored" in err
    code, out, _ = run(capsys, "upload", "dataset", str(dataset), "--json")
    assert code == 0
    assert json.loads(out)["format"] == "npz"
    code, out, _ = run(capsys, "inputs", "model", "--json")
    assert model_id in [item["id"] for item in json.loads(out)["items"]]


def test_submit_takes_an_id_or_a_path_for_each_input(files: tuple[Path, Path], live: Live,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`submit --model ID --dataset PATH` stores the dataset and names both; delete and rerun refuse."""
    model, dataset = files
    _, out, _ = run(capsys, "upload", "model", str(model))
    model_id = out.strip()
    code, out, err = run(capsys, "submit", "--model", model_id, "--dataset", str(dataset), "--method", "l1",
                         "--architecture", "mlp", "--pruning-ratio", "0.5", "--epochs", "1")
    assert code == 0, err
    job = live.worker.context.jobs.get(tenant=TENANT, job_id=out.strip())
    assert job.model_id == model_id
    assert job.dataset_id is not None
    code, _, err = run(capsys, "inputs", "dataset", "--delete", job.dataset_id)
    assert code == 1
    assert "in_use" in err
    code, _, err = run(capsys, "rerun", job.id)
    assert code == 1
    assert "not_ready" in err
    with SecateurClient(live.url) as client:
        client.cancel(job.id)
        client.delete_stored("dataset", job.dataset_id)
        assert job.dataset_id not in [item.id for item in client.stored("dataset")]


def test_a_path_that_looks_like_an_id_is_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file named like a UUID is uploaded, not taken for an id."""
    name = "0b6f3c52-7f0e-4a3e-9d2b-9a4f4c3e2a10"
    monkeypatch.chdir(tmp_path)
    assert is_input_id(name)
    Path(name).write_bytes(b"x")
    assert not is_input_id(name)
    assert not is_input_id("model.onnx")
