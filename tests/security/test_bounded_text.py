"""Bounded text: a worker error quoting a huge member name, error messages quoting huge input, dataset
facts naming huge files, and list pages of big jobs all stay small (issue 15: 75 MB per GET /jobs)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
from sqlalchemy import update

from service.bounds import MAX_MESSAGE_CHARS, bounded
from service.db.models import Job
from service.db.session import session_scope
from service.errors import NotFound
from service.jobs import repository
from tests.security.conftest import FIGURES, SecureApi
from tests.security.test_authz_matrix import plant_job
from tests.security.uploads import png

pytestmark = pytest.mark.anyio
AsyncApiFactory = Callable[..., AbstractAsyncContextManager[SecureApi]]

HUGE_NAME = "m" * (8 << 20)  # an 8 MB member name, quoted by the worker's error


def _fail_with(api: SecureApi, job_id: str, message: str) -> None:
    """Fails a running job the way the worker does: a fenced finish_job with the error text."""
    with session_scope(api.context.jobs.sessions) as session:
        assert repository.finish_job(session, job_id=job_id, epoch=0, status="failed",
                                     error_code="invalid_dataset", error_message=message)


def _stored_message(api: SecureApi, job_id: str) -> str:
    """The error message as the job row holds it."""
    with session_scope(api.context.jobs.sessions) as session:
        job = repository.get_job_any_tenant(session, job_id=job_id)
        assert job is not None
        assert job.error_message is not None
        return job.error_message


async def test_a_worker_error_quoting_a_huge_name_is_stored_and_listed_bounded(secure_api: SecureApi) -> None:
    job_id = plant_job(secure_api, "acme", "running")
    _fail_with(secure_api, job_id, f"the member {HUGE_NAME!r} is not an image")
    assert len(_stored_message(secure_api, job_id)) <= MAX_MESSAGE_CHARS
    listing = await secure_api.client.get("/jobs", headers=secure_api.auth("owner"))
    one = await secure_api.client.get(f"/jobs/{job_id}", headers=secure_api.auth("owner"))
    FIGURES.append(f"bounded text: a worker error quoting an {len(HUGE_NAME) >> 20} MB member name is stored "
                   f"as {len(_stored_message(secure_api, job_id))} characters; GET /jobs answers "
                   f"{len(listing.content)} bytes")
    assert listing.status_code == one.status_code == 200
    assert len(listing.content) < 4096
    assert one.json()["error"]["message"].startswith("the member 'mmm")


async def test_a_huge_message_stored_before_the_bound_is_cut_when_read(secure_api: SecureApi) -> None:
    job_id = plant_job(secure_api, "acme", "failed")
    with session_scope(secure_api.context.jobs.sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(error_code="internal_error",
                                                                   error_message=HUGE_NAME))
    response = await secure_api.client.get(f"/jobs/{job_id}", headers=secure_api.auth("owner"))
    assert len(response.json()["error"]["message"]) == MAX_MESSAGE_CHARS


async def test_an_error_quoting_a_huge_request_value_is_bounded(secure_api: SecureApi) -> None:
    response = await secure_api.client.get(f"/jobs/{'j' * 60_000}", headers=secure_api.auth("owner"))
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    assert len(response.content) < 2 * MAX_MESSAGE_CHARS
    assert len(NotFound("x" * 10**6).message) == MAX_MESSAGE_CHARS
    assert bounded("short") == "short"


async def test_a_page_of_big_jobs_is_bounded_in_bytes_and_the_cursor_reaches_them_all(
    make_secure_api: AsyncApiFactory,
) -> None:
    budget = 60_000
    async with make_secure_api(max_list_bytes=budget) as api:
        planted = {plant_job(api, "acme", "succeeded") for _ in range(8)}
        with session_scope(api.context.jobs.sessions) as session:  # each job's config holds ~20 KB
            session.execute(update(Job).values(config={"options": {"pad": "x" * 20_000}}))
        seen: list[str] = []
        sizes: list[int] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
            page = await api.client.get("/jobs", params=params, headers=api.auth("owner"))
            sizes.append(len(page.content))
            seen += [job["id"] for job in page.json()["jobs"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
    assert sorted(seen) == sorted(planted)  # every job once, none lost at a cut
    assert len(sizes) > 1
    assert max(sizes) <= budget + 1000  # the pages' JSON framing beyond the jobs themselves


async def test_dataset_facts_cut_huge_file_names(secure_api: SecureApi) -> None:
    long_name = "n" * 60_000  # a ZIP member name can be 64 KiB
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split in ("train", "val"):
            for label in ("a", "b"):
                for i in range(60):  # enough that one unreadable file is under 1%
                    zf.writestr(f"{split}/{label}/{i}.png", png())
        zf.writestr(f"train/a/{long_name}.png", b"not an image")
    response = await secure_api.client.post("/datasets/validate", files={"file": ("d.zip", buf.getvalue())},
                                            headers=secure_api.auth("owner"))
    assert response.status_code == 200, response.text
    assert len(response.content) < 10_000
    [unreadable] = response.json()["unreadable"]
    assert unreadable.startswith("train/a/nnn")
    assert len(unreadable) <= 200
