"""The webhook sender's queries on PostgreSQL: finished jobs found by their JSON config, one delivery each,
attempts leased so two senders (two API replicas) never POST the same delivery."""

from __future__ import annotations

import json

import pytest

from service.db.migrate import upgrade_head
from service.db.models import Job
from service.db.session import make_engine, make_session_factory, session_scope
from service.jobs import repository
from service.settings import Settings
from service.webhooks.sender import Sender
from service.webhooks.signing import HEADER, verify

pytestmark = pytest.mark.integration

SECRET = "whsec_pg"


def test_two_senders_deliver_each_finished_job_once_on_postgres(postgres_url: str) -> None:
    """Jobs with and without a webhook_url end; two senders sweep in turn; each hooked job is POSTed once."""
    engine = make_engine(postgres_url)
    upgrade_head(engine)
    sessions = make_session_factory(engine)
    settings = Settings(database_url=postgres_url, webhook_secret=SECRET, webhook_allow_private=True)
    hooked = []
    for url in ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b", None):
        config = {"method": "l1", "target": {"pruning_ratio": 0.5}, **({"webhook_url": url} if url else {})}
        job = Job(tenant="public", status="queued", config=config, progress={}, model_sha256="0" * 64,
                  model_bytes=1, model_format="onnx", dataset_sha256="1" * 64, dataset_bytes=1,
                  dataset_format="npz")
        with session_scope(sessions) as session:
            job_id = repository.create_job(session, job=job).id
            claimed = repository.claim_job(session, job_id=job_id, worker_id="w")
            assert claimed is not None
            assert repository.finish_job(session, job_id=job_id, epoch=claimed.epoch, status="succeeded")
        if url:
            hooked.append(job_id)
    posts: list[tuple[str, bytes, dict[str, str]]] = []

    def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        """Records the POST and answers 204."""
        posts.append((url, body, headers))
        return 204

    first, second = Sender(settings, sessions, post=post), Sender(settings, sessions, post=post)
    assert first.discover() == 2
    assert second.discover() == 0  # the rows exist: the unique job_id keeps one each
    assert second.deliver_due() + first.deliver_due() == 2
    assert first.sweep() + second.sweep() == 0
    assert sorted(url for url, _, _ in posts) == ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]
    assert sorted(json.loads(body)["id"] for _, body, _ in posts) == sorted(hooked)
    assert all(verify(SECRET, headers[HEADER], body) for _, body, headers in posts)
    engine.dispose()
