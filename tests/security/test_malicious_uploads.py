"""Malicious uploads: every corpus file, in every role, is a 4xx with a reason code; no payload runs;
nothing is written outside the job's folder; the API, the engine loaders and the worker stay up.
"""

from __future__ import annotations

import collections
import errno
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.db.session import session_scope
from service.jobs import repository
from tests.security.conftest import FIGURES, SecureApi
from tests.security.corpus import Canary, Item, build_corpus, expanding_onnx, matmul_chain, pickles
from tests.security.uploads import linear_onnx, npz_dataset
from workers.runner import EXIT_OVERDUE

VALID = {"model": ("model.onnx", linear_onnx().SerializeToString()), "dataset": ("data.npz", npz_dataset())}


@dataclass(frozen=True)
class Corpus:
    """The generated files, their canary, and the folder escapes aim at."""

    items: list[Item]
    canary: Canary
    outside: Path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    """Builds the corpus once per module, with its listener running for the whole module."""
    root = tmp_path_factory.mktemp("corpus")
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"secret" * 8)  # what the escaping links point at
    with Canary(root / "canary", token=f"secateur-{root.name}") as canary:
        yield Corpus(build_corpus(canary, outside), canary, outside)


def _uploads(corpus: Corpus) -> list[tuple[Item, str]]:
    """Every (file, role) pair the corpus must be refused as."""
    return [(item, role) for item in corpus.items for role in item.roles]


def _escapes(corpus: Corpus, roots: list[Path]) -> list[Path]:
    """Files named with the corpus token anywhere under `roots`, plus anything new in the outside folder."""
    found = [p for root in roots if root.exists() for p in root.rglob(f"*{corpus.canary.token}*")]
    return found + [p for p in corpus.outside.iterdir() if p.name != "secret.bin"]


def _check_dirs() -> set[str]:
    """The sandbox's temp folders currently in the system temp dir (each must be gone after its request)."""
    return {p.name for p in Path(tempfile.gettempdir()).glob("secateur-check-*")}


@pytest.mark.anyio
async def test_api_refuses_every_malicious_upload_with_a_coded_4xx(
    secure_api: SecureApi, corpus: Corpus, tmp_path: Path,
) -> None:
    before = _check_dirs()
    answers: list[tuple[str, str, int, str]] = []
    for item, role in _uploads(corpus):
        other = "dataset" if role == "model" else "model"
        parts = {role: (item.name, item.data), other: VALID[other]}
        response = await secure_api.client.post(
            "/jobs", files=parts, data={"config": '{"method": "l1", "architecture": "mlp", '
                                               '"target": {"pruning_ratio": 0.5}}'},
            headers=secure_api.auth("owner"))
        code = response.json().get("error", {}).get("code", "") if response.content else ""
        answers.append((item.name, role, response.status_code, code))
    refused = [a for a in answers if 400 <= a[2] < 500 and a[3]]
    fired = corpus.canary.fired()
    escapes = _escapes(corpus, [tmp_path, corpus.outside.parent, Path.cwd()])
    # Names never decide: a valid dataset named .onnx and a valid model named .npz are accepted.
    control = await secure_api.submit(names=("data.npz", "model.onnx"))
    codes = collections.Counter(a[3] for a in refused)
    FIGURES.append(f"malicious corpus: {len(corpus.items)} files, {len(answers)} uploads (file x role); "
                   f"4xx with a reason code: {len(refused)}/{len(answers)} "
                   f"({100 * len(refused) / len(answers):.0f}%); canaries fired: {len(fired)}; "
                   f"files written outside the job folders: {len(escapes)}")
    FIGURES.append("refusal codes: " + ", ".join(f"{code} {n}" for code, n in sorted(codes.items())))
    assert len(corpus.items) >= 40
    assert [a for a in answers if a not in refused] == []
    assert fired == []
    assert escapes == []
    assert control.status_code == 202, control.text
    job_id = control.json()["id"]
    assert {p.relative_to(secure_api.root / "objects").as_posix() for p in secure_api.objects()} == {
        f"tenants/acme/jobs/{job_id}/inputs/model", f"tenants/acme/jobs/{job_id}/inputs/dataset"}
    assert _check_dirs() <= before  # every sandbox temp folder was removed
    assert (await secure_api.client.get("/healthz")).status_code == 200


def test_engine_loaders_refuse_every_file_with_a_typed_error(corpus: Corpus, tmp_path: Path) -> None:
    """The worker side: the engine's own loaders, in this very process, refuse each file in each role."""
    from workers.compression.config import DataOptions
    from workers.compression.datasets import load_dataset
    from workers.compression.errors import UserError
    from workers.compression.model_io import load_model

    refused = 0
    for item, role in _uploads(corpus):
        folder = tmp_path / f"{role}-{item.name}"
        folder.mkdir()
        path = folder / item.name
        path.write_bytes(item.data)
        for name, target in item.symlinks.items():
            (folder / name).symlink_to(target)
        load: Callable[[], object] = (
            (lambda: load_model(path, architecture="mlp", input_shape=(4,), num_classes=2)) if role == "model"
            else (lambda: load_dataset(path, DataOptions())))
        with pytest.raises(UserError):
            load()
        refused += 1
    FIGURES.append(f"engine loaders (worker side, no sandbox): {refused}/{len(_uploads(corpus))} refused "
                   f"with a typed error; canaries fired: {len(corpus.canary.fired())}")
    assert corpus.canary.fired() == []
    assert _escapes(corpus, [tmp_path, corpus.outside.parent]) == []


@pytest.mark.anyio
async def test_worker_revalidates_what_it_loads(
    make_secure_api: Callable[..., AbstractAsyncContextManager[SecureApi]], corpus: Corpus,
) -> None:
    """With submit-time validation off, files that pass the head sniff are queued; the worker fails them."""
    from workers.runner import run_job

    async with make_secure_api(validate_uploads=False) as api:
        queued: dict[str, str] = {}
        for item, role in _uploads(corpus):
            other = "dataset" if role == "model" else "model"
            response = await api.client.post(
                "/jobs", files={role: (item.name, item.data), other: VALID[other]},
                data={"config": '{"method": "l1", "architecture": "mlp", "target": {"pruning_ratio": 0.5}}'},
                headers=api.auth("owner"))
            assert response.status_code < 500, response.text
            if response.status_code == 202:
                queued[response.json()["id"]] = f"{role}:{item.name}"
        outcomes = {}
        for job_id, label in queued.items():
            assert run_job(job_id, settings=api.context.settings, actor="test-worker") == "failed", label
            with session_scope(api.context.jobs.sessions) as session:
                job = repository.get_job(session, tenant="acme", job_id=job_id)
                assert job is not None
                outcomes[label] = job.error_code
        assert (await api.client.get("/healthz")).status_code == 200
    FIGURES.append(f"worker re-validation: {len(queued)} uploads passed the head sniff with submit-time "
                   f"validation off; the worker failed all {len(queued)} with an input error code; "
                   f"canaries fired: {len(corpus.canary.fired())}")
    assert len(queued) >= 20  # the sniff alone stops only the obvious; the rest is the loaders' job
    assert {code for code in outcomes.values()} <= {"invalid_model", "invalid_dataset", "unsupported_op",
                                                     "unsupported_model_format", "model_too_costly"}, outcomes
    assert corpus.canary.fired() == []


_ONNX_CONFIG: dict[str, Any] = {"method": "magnitude", "target": {"sparsity": 0.5}, "finetune": {"epochs": 1}}
_CEILING_RUN = """
import json, resource, sys
from service.settings import Settings
from workers.runner import run_job
settings = Settings(**json.loads(sys.argv[1]))
before = resource.getrlimit(resource.RLIMIT_AS)
status = run_job(sys.argv[2], settings=settings, actor="ceiling-test")
print(json.dumps({"status": status, "limit_restored": resource.getrlimit(resource.RLIMIT_AS) == before}))
"""


def _run_job_in_child(api: SecureApi, job_id: str, **settings: object) -> tuple[int, int, str]:
    """Runs one job in a fresh process (a worker's job child) with `settings` added; returns its exit
    status, its peak RSS in bytes (the kernel's own count, from wait4) and its last output line."""
    base = {"data_dir": str(api.root), "auth": "keys", **settings}
    proc = subprocess.Popen([sys.executable, "-c", _CEILING_RUN, json.dumps(base), job_id],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[2])
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = out.strip().splitlines()
    return proc.returncode, usage.ru_maxrss * 1024, lines[-1] if lines else ""


def _flat_npz(train: int) -> bytes:
    """A flat 4-feature .npz with `train` training samples and 4 validation samples."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x_train=rng.random((train, 4), dtype=np.float32), y_train=np.arange(train) % 2,
             x_val=rng.random((4, 4), dtype=np.float32), y_val=np.arange(4) % 2)
    return buf.getvalue()


async def _queued(api: SecureApi, model: bytes, dataset: bytes, config: dict[str, Any]) -> str:
    """Submits a job (submit-time validation is off in these tests: the run is the point); returns its id."""
    files = {"model": ("model.onnx", model), "dataset": ("data.npz", dataset)}
    response = await api.client.post("/jobs", files=files, data={"config": json.dumps(config)},
                                     headers=api.auth("owner"))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _job_error(api: SecureApi, job_id: str) -> tuple[str, str | None, str | None]:
    """Returns the job's (status, error code, error message)."""
    with session_scope(api.context.jobs.sessions) as session:
        job = repository.get_job(session, tenant="acme", job_id=job_id)
        assert job is not None
        return job.status, job.error_code, job.error_message


@pytest.mark.anyio
async def test_a_job_past_its_memory_ceiling_fails_and_its_rss_stays_under_it(
    make_secure_api: Callable[..., AbstractAsyncContextManager[SecureApi]],
) -> None:
    """A model within every per-sample limit whose training batch needs 16 GiB: the job process runs under
    a 3 GiB ceiling, fails resources_exceeded, never holds more than the ceiling, and returns normally."""
    ceiling = 3 << 30
    config = {**_ONNX_CONFIG, "finetune": {"epochs": 1, "batch_size": 64}}
    async with make_secure_api(validate_uploads=False) as api:
        job_id = await _queued(api, expanding_onnx(1 << 26), _flat_npz(train=64), config)
        code, peak, last = _run_job_in_child(api, job_id, job_memory_bytes=ceiling)
        status, error, message = _job_error(api, job_id)
    FIGURES.append(f"memory ceiling: a job needing ~16 GiB ran under a {ceiling >> 30} GiB ceiling: {status}/"
                   f"{error}; the job process's peak RSS {peak / (1 << 30):.2f} GiB; exit status {code}")
    assert (status, error) == ("failed", "resources_exceeded"), message
    assert peak < ceiling
    assert code == 0
    assert json.loads(last) == {"status": "failed", "limit_restored": True}


@pytest.mark.anyio
async def test_a_forward_pass_past_its_cpu_budget_fails_the_job(
    make_secure_api: Callable[..., AbstractAsyncContextManager[SecureApi]],
) -> None:
    """20 MatMuls over 2048x2048 tensors per sample (within the FLOP limit, ~10 CPU-s a pass here) against a
    2 CPU-s budget per step: the watcher stops the job in the middle of its first pass, with the code."""
    config = _ONNX_CONFIG
    async with make_secure_api(validate_uploads=False) as api:
        job_id = await _queued(api, matmul_chain(20, 2048), npz_dataset(), config)
        started = time.monotonic()
        code, _, _ = _run_job_in_child(api, job_id, job_step_cpu_s=2.0, job_cpu_flops_per_s=1e15,
                                       stop_grace_s=2.0, heartbeat_interval_s=0.5)
        took = time.monotonic() - started
        status, error, message = _job_error(api, job_id)
    FIGURES.append(f"CPU budget: a 0.34 TFLOP-per-sample forward pass against 2 CPU-s per step: {status}/"
                   f"{error} after {took:.1f} s (exit status {code}: the job process ended itself)")
    assert (status, error) == ("failed", "resources_exceeded"), message
    assert "CPU seconds" in (message or "")
    assert code in (0, EXIT_OVERDUE)


@pytest.mark.anyio
async def test_a_full_disk_at_a_checkpoint_is_retried_as_an_infrastructure_fault(
    make_secure_api: Callable[..., AbstractAsyncContextManager[SecureApi]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ENOSPC while writing a checkpoint is the worker's disk, not the input: the job goes back to the queue
    for another attempt (it used to fail as internal_error)."""
    from workers.checkpoints import StorageCheckpoints
    from workers.runner import run_job

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StorageCheckpoints, "save", full)
    async with make_secure_api(validate_uploads=False) as api:
        job_id = await _queued(api, linear_onnx().SerializeToString(), npz_dataset(), _ONNX_CONFIG)
        outcome = run_job(job_id, settings=api.context.settings, actor="test-worker")
        status, error, _ = _job_error(api, job_id)
    assert (outcome, status, error) == ("queued", "queued", None)


def test_the_canaries_are_live(tmp_path: Path) -> None:
    """Loading two payloads the unsafe way (in a throwaway process) does fire them: the detector works."""
    with Canary(tmp_path / "canary", token="live") as canary:
        samples = {item.name: item.data for item in pickles(canary)}
        (tmp_path / "p.pkl").write_bytes(samples["model.pth"])
        (tmp_path / "o.npz").write_bytes(samples["object.npz"])
        unsafe = ("import pickle, numpy; pickle.loads(open('p.pkl', 'rb').read()); "
                  "numpy.load('o.npz', allow_pickle=True)['x_train']")
        subprocess.run([sys.executable, "-c", unsafe], cwd=tmp_path, check=True, timeout=60)
        deadline = time.monotonic() + 5
        while len(canary.fired()) < 4 and time.monotonic() < deadline:  # connections are accepted async
            time.sleep(0.05)
        assert canary.fired() == ["live-model.pth", "live-model.pth", "live-object.npz", "live-object.npz"]
