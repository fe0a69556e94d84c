"""POST /preflight with SECATEUR_PREFLIGHT_URL: forwarded as sent, answered as the pre-flight service answers.

The pre-flight service is a loopback stub here (tests/e2e/test_compose_topology.py forwards to a real one):
it records what reached it and answers a canned status and body, so the test sees both ends of the hop.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from service.api.preflight_forward import FORWARDED
from tests.integration.processes import free_ports
from tests.service.conftest import CONFIG, safetensors_model

pytestmark = pytest.mark.anyio


@dataclass
class Upstream:
    """What the stub pre-flight service answers, and every request (path, headers, body) it received."""

    status: int = 200
    body: bytes = b'{"ok": true}'
    content_type: str = "application/json"
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@contextlib.contextmanager
def upstream(answer: Upstream) -> Iterator[Upstream]:
    """Serves `answer` on a loopback port in a thread for the block."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's naming
            """Records the request, then answers the canned status and body."""
            body = self.rfile.read(int(self.headers["Content-Length"]))
            answer.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, *args: Any) -> None:
            """Keeps the test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    answer.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield answer
    finally:
        server.shutdown()
        server.server_close()


async def test_multipart_goes_on_as_sent_and_the_answer_comes_back_unchanged(make_api: Callable[..., Any]
                                                                             ) -> None:
    """Body bytes, content type and key reach the service; its 422 and JSON are the client's answer."""
    refusal = {"error": {"code": "invalid_config", "message": "no channel group that l1 can prune"}}
    form = httpx.Request("POST", "http://test", files={"model": ("m.safetensors", safetensors_model())},
                         data={"config": json.dumps(CONFIG)})
    sent = form.read()
    with upstream(Upstream(status=422, body=json.dumps(refusal).encode())) as stub:
        async with make_api(preflight_url=stub.url + "/") as api:
            response = await api.client.post("/preflight", content=sent, headers={
                "Authorization": "Bearer sk_test", "Content-Type": form.headers["content-type"]})
    assert (response.status_code, response.json()) == (422, refusal)
    (path, headers, body), = stub.seen
    assert path == "/preflight"
    assert headers["authorization"] == "Bearer sk_test"
    assert headers["content-type"] == form.headers["content-type"]  # the same boundary
    assert body == sent
    assert headers[FORWARDED] == "1"


async def test_json_with_stored_ids_goes_on_and_a_200_comes_back(make_api: Callable[..., Any]) -> None:
    """A JSON body (read whole by the request guard first) reaches the service byte for byte."""
    answer = {"ok": True, "input_shape": [3], "num_classes": 2}
    sent = {"model_id": "0" * 32, "config": CONFIG}
    with upstream(Upstream(body=json.dumps(answer).encode())) as stub:
        async with make_api(preflight_url=stub.url) as api:
            response = await api.client.post("/preflight", json=sent)
    assert (response.status_code, response.json()) == (200, answer)
    assert json.loads(stub.seen[0][2]) == sent


async def test_no_usable_answer_is_a_coded_503(make_api: Callable[..., Any]) -> None:
    """Nothing listening, or a proxy's HTML page instead of JSON: 503 preflight_unavailable, not a 500."""
    (port,) = free_ports(1)
    with upstream(Upstream(status=502, body=b"<html>bad gateway</html>", content_type="text/html")) as stub:
        for url in (f"http://127.0.0.1:{port}", stub.url):
            async with make_api(preflight_url=url) as api:
                response = await api.client.post("/preflight", json={"model_id": "x", "config": CONFIG})
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "preflight_unavailable"
            assert "SECATEUR_PREFLIGHT_URL" in response.json()["error"]["message"]
            assert url not in response.text  # the internal address stays in the log


async def test_a_body_over_the_upload_limit_is_refused_on_the_way(make_api: Callable[..., Any]) -> None:
    """The forwarded body counts against max_upload_bytes as it streams: 413, as without forwarding."""
    with upstream(Upstream()) as stub:
        async with make_api(preflight_url=stub.url, max_upload_bytes=64 * 1024) as api:
            response = await api.client.post("/preflight", data={"config": json.dumps(CONFIG)},
                                             files={"model": ("m.safetensors", safetensors_model())})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_a_forwarded_request_runs_where_it_lands(make_api: Callable[..., Any]) -> None:
    """A request already forwarded is never forwarded again (a loop by misconfiguration): it runs here."""
    with upstream(Upstream()) as stub:
        async with make_api(preflight_url=stub.url) as api:
            response = await api.client.post("/preflight", headers={FORWARDED: "1"},
                                             json={"model_id": "unknown", "config": CONFIG})
    assert response.status_code == 404, response.text  # this API's own answer: no such stored model
    assert stub.seen == []
