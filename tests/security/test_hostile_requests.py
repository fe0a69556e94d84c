"""Hostile requests (not files): every one is a 4xx with a code, never a 500 (issue 15, service side).

Configs nested 1000 deep, 5000-digit integers, NaN/Infinity in the preprocessing numbers, a 300-byte
multipart boundary, JSON bodies past their bounds, a body that stops arriving; and a full disk during an
upload, which is the server's condition: 507 with a code, nothing kept.
"""

from __future__ import annotations

import errno
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import httpx
import pytest

from service.bounds import MAX_JSON_DEPTH, JsonRefused, load_json
from service.storage import local
from tests.security.conftest import SecureApi
from tests.security.uploads import CONFIG, linear_onnx, npz_dataset

pytestmark = pytest.mark.anyio
AsyncApiFactory = Callable[..., AbstractAsyncContextManager[SecureApi]]


def _config_text(**data: str) -> str:
    """The test CONFIG with `data` fields given as raw JSON literals (NaN, 1e999, ... are not Python JSON)."""
    fields = ", ".join(f'"{name}": {literal}' for name, literal in data.items())
    return json.dumps(CONFIG)[:-1] + f', "data": {{{fields}}}}}'


# name -> the config part as sent; each must be refused as the input's own error: 422 invalid_config.
HOSTILE_CONFIGS = {
    "nested_1000_arrays": "[" * 1000 + "]" * 1000,
    "nested_1000_objects": '{"a":' * 1000 + "1" + "}" * 1000,
    "options_nested_past_the_bound": json.dumps({**CONFIG, "options": json.loads(
        '{"a":' * MAX_JSON_DEPTH + "1" + "}" * MAX_JSON_DEPTH)}),
    "integer_of_5000_digits": json.dumps(CONFIG)[:-1] + ', "seed": ' + "9" * 5000 + "}",
    "nan_in_data_mean": _config_text(mean="[NaN, 0.5, 0.5]"),
    "infinity_in_data_std": _config_text(std="[Infinity, 1, 1]"),
    "minus_infinity_in_data_scale": _config_text(scale="-Infinity"),
    "overflowing_float_in_data_scale": _config_text(scale="1e999"),
    "nan_elsewhere_in_config": json.dumps(CONFIG)[:-1] + ', "options": {"x": NaN}}',
}


async def _post_config(api: SecureApi, config: str) -> httpx.Response:
    """Submits valid files with `config` as the config part."""
    files = {"model": ("m.onnx", linear_onnx().SerializeToString()), "dataset": ("d.npz", npz_dataset())}
    return await api.client.post("/jobs", files=files, data={"config": config}, headers=api.auth("owner"))


@pytest.mark.parametrize("name", sorted(HOSTILE_CONFIGS))
async def test_a_hostile_config_is_refused_as_invalid_config(secure_api: SecureApi, name: str) -> None:
    response = await _post_config(secure_api, HOSTILE_CONFIGS[name])
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_config"), response.text
    assert len(response.json()["error"]["message"]) <= 1000
    assert secure_api.objects() == []


async def test_a_multipart_boundary_over_256_bytes_is_a_400(secure_api: SecureApi) -> None:
    boundary = "b" * 300
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="config"\r\n\r\n{{}}\r\n'
            f"--{boundary}--\r\n").encode()
    headers = {**secure_api.auth("owner"), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    for path in ("/jobs", "/datasets/validate"):
        response = await secure_api.client.post(path, content=body, headers=headers)
        assert (response.status_code, response.json()["error"]["code"]) == (400, "bad_request"), path


@pytest.mark.parametrize(("body", "status", "code"), [
    ("[" * 1000 + "]" * 1000, 400, "invalid_json"),
    ('{"model_id": "m", "dataset_id": "d", "config": {"seed": ' + "1" * 5000 + "}}", 400, "invalid_json"),
    ('{"config": {"data": {"mean": [NaN]}}}', 400, "invalid_json"),
    ('{"dataset_id": ' + '"x' * 10, 400, "invalid_json"),
    ("[" + "0," * 600_000 + "0]", 413, "payload_too_large"),  # 1.2 MB over the 1 MiB bound
])
async def test_a_hostile_json_body_is_refused_before_any_route(
    secure_api: SecureApi, body: str, status: int, code: str,
) -> None:
    headers = {**secure_api.auth("owner"), "Content-Type": "application/json"}
    for path in ("/jobs", "/datasets/validate"):
        response = await secure_api.client.post(path, content=body.encode(), headers=headers)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), path


def test_the_json_bounds_accept_every_real_config() -> None:
    assert load_json(json.dumps(CONFIG)) == CONFIG
    assert load_json('{"data": {"mean": [0.485, 0.456, 0.406], "scale": 0.00392156862745098}}')
    with pytest.raises(JsonRefused, match="nests 33 levels"):
        load_json("[" * 33 + "]" * 33)
    assert load_json('"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["') == "[" * 40  # brackets in strings


async def test_a_body_that_stops_arriving_is_a_408_and_leaves_nothing(
    make_secure_api: AsyncApiFactory,
) -> None:
    boundary = "slow-body"

    async def trickle() -> AsyncIterator[bytes]:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="m.onnx"\r\n\r\n'
               ).encode() + linear_onnx().SerializeToString()
        await anyio.sleep(1.0)  # then nothing for longer than the body read timeout
        yield b"never read"

    async with make_secure_api(body_read_timeout_s=0.3) as api:
        headers = {**api.auth("owner"), "Content-Type": f"multipart/form-data; boundary={boundary}"}
        response = await api.client.post("/jobs", content=trickle(), headers=headers)
        assert (response.status_code, response.json()["error"]["code"]) == (408, "request_timeout")
        assert api.objects() == []


async def test_a_full_disk_during_an_upload_is_a_507_with_a_code(secure_api: SecureApi,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(self: Any, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local._LocalWriter, "_write", disk_full)
    response = await secure_api.submit()
    assert (response.status_code, response.json()["error"]["code"]) == (507, "insufficient_storage")
    assert "retry-after" in response.headers
    assert secure_api.objects() == []

