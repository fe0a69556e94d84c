"""POST /jobs: the streamed upload, its checks, and that every refusal leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from service.db.session import session_scope
from service.jobs import repository
from service.storage.keys import input_key
from tests.service.conftest import (
    CONFIG,
    Api,
    npz_dataset,
    onnx_head,
    safetensors_model,
    zip_bytes,
)

pytestmark = pytest.mark.anyio

BOUNDARY = "secateur-test-boundary"


def multipart(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    """Encodes (name, filename, data) parts as a multipart/form-data body with BOUNDARY."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


class CountingBody:
    """A request body streamed in fixed chunks that records how much the server pulled."""

    def __init__(self, data: bytes, chunk: int = 64 * 1024) -> None:
        self.data, self.chunk, self.sent = data, chunk, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.chunk):
            self.sent = start + self.chunk
            yield self.data[start:start + self.chunk]


async def post_raw(api: Api, body: Any, headers: dict[str, str] | None = None) -> Any:
    """POSTs a hand-built multipart body."""
    all_headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", **(headers or {})}
    return await api.client.post("/jobs", content=body, headers=all_headers)


def assert_refused(api: Api, response: Any, status: int, code: str) -> None:
    """Checks the error shape and that the refusal left no row, no object and no wake-up."""
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert set(response.json()["error"]) == {"code", "message"}
    assert api.job_count() == 0
    assert api.stored_files() == []
    assert api.wakeups() == []


async def test_happy_path_stores_hashed_inputs_queues_and_wakes(api: Api) -> None:
    model, dataset = safetensors_model(), npz_dataset()
    response = await api.submit(model, dataset)
    assert response.status_code == 202, response.text
    body = response.json()
    job_id = body["id"]
    assert response.headers["location"] == f"/jobs/{job_id}"
    assert body["status"] == "queued"
    assert body["attempt"] == 0
    assert body["error"] is None
    assert body["config"]["method"] == "l1"
    assert body["config"]["finetune"]["lr"] == 0.01
    assert body["links"]["self"] == f"/jobs/{job_id}"
    assert body["links"]["model"] is None
    with session_scope(api.context.jobs.sessions) as session:
        job = repository.get_job(session, tenant="public", job_id=job_id)
    assert job is not None
    assert (job.model_sha256, job.model_bytes, job.model_format) == (
        hashlib.sha256(model).hexdigest(), len(model), "safetensors")
    assert (job.dataset_sha256, job.dataset_bytes, job.dataset_format) == (
        hashlib.sha256(dataset).hexdigest(), len(dataset), "npz")
    store = api.context.store
    assert b"".join(store.open_stream(input_key("public", job_id, "model"))) == model
    assert b"".join(store.open_stream(input_key("public", job_id, "dataset"))) == dataset
    [wakeup] = api.wakeups()
    assert job_id in wakeup
    assert "secateur.run_job" in wakeup


async def test_large_upload_is_streamed_in_small_chunks(api: Api) -> None:
    # 3 MiB of safetensors payload sent in 64 KiB chunks crosses several store-write batches.
    model = safetensors_model(padding_mib=3)
    body = CountingBody(multipart([("config", None, json.dumps(CONFIG).encode()),
                                   ("model", "m.safetensors", model), ("dataset", "d.npz", npz_dataset())]))
    response = await post_raw(api, body)
    assert response.status_code == 202, response.text
    key = input_key("public", response.json()["id"], "model")
    assert hashlib.sha256(b"".join(api.context.store.open_stream(key))).hexdigest() == hashlib.sha256(
        model).hexdigest()


async def test_onnx_model_and_image_zip_dataset_are_accepted(api: Api) -> None:
    dataset = zip_bytes({"train/cat/0.png": b"\x89PNG", "val/cat/0.png": b"\x89PNG"})
    response = await api.submit(onnx_head(), dataset, {**CONFIG, "architecture": None})
    assert response.status_code == 202, response.text
    with session_scope(api.context.jobs.sessions) as session:
        job = repository.get_job(session, tenant="public", job_id=response.json()["id"])
    assert job is not None
    assert (job.model_format, job.dataset_format) == ("onnx", "zip")


@pytest.mark.parametrize(("config", "code"), [
    ("{not json", "invalid_config"),
    ({**CONFIG, "bogus": 1}, "invalid_config"),
    ({**CONFIG, "target": {"sparsity": 0.5}}, "invalid_config"),  # l1 takes pruning_ratio
    ({**CONFIG, "options": {"nope": True}}, "invalid_config"),
    ({k: v for k, v in CONFIG.items() if k != "architecture"}, "invalid_config"),  # safetensors needs it
])
async def test_bad_config_is_422(api: Api, config: Any, code: str) -> None:
    assert_refused(api, await api.submit(config=config), 422, code)


@pytest.mark.parametrize(("model", "status", "code"), [
    (pickle.dumps({"weights": [1, 2, 3]}), 415, "unsupported_model_format"),
    (zip_bytes({"archive/data.pkl": pickle.dumps(1), "archive/version": b"3"}), 415,
     "unsupported_model_format"),
    (b"GIF89a this is not a model at all", 415, "unsupported_model_format"),
    (b"", 415, "unsupported_model_format"),
])
async def test_bad_model_is_refused(api: Api, model: bytes, status: int, code: str) -> None:
    assert_refused(api, await api.submit(model=model), status, code)


@pytest.mark.parametrize("dataset", [
    pickle.dumps({"x": [1]}),
    b"\x93NUMPY single array",
    zip_bytes({"archive/data.pkl": pickle.dumps(1)}),
    # the first member looks like an .npz, the central directory shows a pickle behind it
    zip_bytes({"x_train.npy": b"x", "archive/data.pkl": pickle.dumps(1), "archive/version": b"3"}),
    npz_dataset()[:-30],  # truncated: the central directory is cut off
])
async def test_bad_dataset_is_422(api: Api, dataset: bytes) -> None:
    assert_refused(api, await api.submit(dataset=dataset), 422, "invalid_dataset")


async def test_pickle_is_refused_after_its_first_chunk_not_after_the_whole_upload(api: Api) -> None:
    body = CountingBody(multipart([("model", "m.pt", pickle.dumps(list(range(100))) + bytes(8 << 20)),
                                   ("dataset", "d.npz", npz_dataset()), ("config", None, b"{}")]))
    assert_refused(api, await post_raw(api, body), 415, "unsupported_model_format")
    assert body.sent < 1 << 20  # refused from the head: the other ~8 MiB were never read


@pytest.mark.parametrize(("parts", "status", "code"), [
    ([("model", "m", safetensors_model())], 422, "missing_part"),
    ([("config", None, json.dumps(CONFIG).encode()), ("weights", "w", b"x")], 422, "unexpected_part"),
    ([("config", None, json.dumps(CONFIG).encode())] * 2, 422, "duplicate_part"),
])
async def test_malformed_submissions(api: Api, parts: list[tuple[str, str | None, bytes]], status: int,
                                     code: str) -> None:
    assert_refused(api, await post_raw(api, multipart(parts)), status, code)


async def test_truncated_multipart_is_400(api: Api) -> None:
    body = multipart([("config", None, json.dumps(CONFIG).encode()),
                      ("model", "m", safetensors_model())])[:-40]
    assert_refused(api, await post_raw(api, body), 400, "bad_request")


async def test_non_multipart_is_415(api: Api) -> None:
    # JSON is taken (stored inputs by id: tests/service/test_stored_inputs.py); any other type is not.
    text = {"content-type": "text/plain"}
    response = await api.client.post("/jobs", content=json.dumps(CONFIG), headers=text)
    assert_refused(api, response, 415, "unsupported_media_type")


async def test_oversize_body_is_413_mid_stream_whatever_content_length_claims(
        make_api: Callable[..., Any]) -> None:
    async with make_api(max_upload_bytes=256 * 1024) as api:
        body = CountingBody(multipart([("config", None, json.dumps(CONFIG).encode()),
                                       ("model", "m.safetensors", safetensors_model() + bytes(4 << 20)),
                                       ("dataset", "d.npz", npz_dataset())]))
        assert_refused(api, await post_raw(api, body, {"Content-Length": "1000"}), 413, "payload_too_large")
        assert body.sent <= 256 * 1024 + 64 * 1024  # stopped at the first chunk past the limit
        # An honest Content-Length above the limit is refused before any byte is read.
        honest = CountingBody(b"x" * (512 * 1024))
        assert_refused(api, await post_raw(api, honest, {"Content-Length": str(512 * 1024)}), 413,
                       "payload_too_large")
        assert honest.sent == 0


async def test_oversize_config_part_is_413(make_api: Callable[..., Any]) -> None:
    async with make_api(max_config_bytes=100) as api:
        big = {**CONFIG, "options": {"pad": "x" * 200}}
        assert_refused(api, await api.submit(config=big), 413, "payload_too_large")


async def test_broker_down_still_queues_the_job(make_api: Callable[..., Any]) -> None:
    async with make_api(broker_url="redis://127.0.0.1:9/0", broker_timeout_s=0.2) as api:
        response = await api.submit()
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "queued"
        assert api.job_count() == 1


async def test_idempotency_key_replays_the_first_job_whatever_the_body(api: Api) -> None:
    headers = {"Idempotency-Key": "k-1"}
    first = await api.submit(headers=headers)
    again = await api.submit(headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == f"/jobs/{first.json()['id']}"
    # The key alone names the request (its body is never read), so a changed body is a replay too.
    other = await api.submit(config={**CONFIG, "seed": 7}, headers=headers)
    assert (other.status_code, other.json()["id"]) == (202, first.json()["id"])
    assert api.job_count() == 1
    assert len(api.wakeups()) == 1
    # only the first submission's two inputs are kept
    assert len(api.stored_files()) == 2
