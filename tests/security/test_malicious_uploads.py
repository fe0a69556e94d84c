"""Malicious uploads: every corpus file, in every role, is a 4xx with a reason code; no payload runs;
nothing is written outside the job's folder; the API, the engine loaders and the worker stay up.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.db.session import session_scope
from service.jobs import repository
from tests.security.conftest import FIGURES, SecureApi
from tests.security.corpus import Canary, Item, build_corpus, pickles
from tests.security.uploads import linear_onnx, npz_dataset

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
