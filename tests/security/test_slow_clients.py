"""Slow clients (slowloris) cannot hold connections: headers have a deadline, body chunks a timeout, and
`/healthz` stays fast while hundreds of them are open (a real uvicorn with the protocol `serve` uses)."""

from __future__ import annotations

import contextlib
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from service.api.http_protocol import header_deadline_protocol
from service.db.migrate import upgrade_head
from service.settings import Settings
from tests.security.conftest import FIGURES, RELAXED, serving

pytestmark = pytest.mark.timeout(120)
HEADER_S = 0.5  # the test server's header deadline
SLOW_CLIENTS = 400


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    """A real uvicorn (open auth, 1 s body chunk timeout) with the header deadline; yields its port."""
    settings = Settings(data_dir=tmp_path, body_read_timeout_s=1.0, validate_uploads=False, **RELAXED)
    app = create_app(settings)
    upgrade_head(app.state.context.engine)
    with serving(app, http=header_deadline_protocol(HEADER_S)) as port:
        yield port


def _read_all(sock: socket.socket, timeout_s: float = 5.0) -> bytes:
    """Reads until the server closes the connection."""
    sock.settimeout(timeout_s)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_headers_that_never_finish_get_a_408_at_the_deadline(server: int) -> None:
    for start in (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a", b""):  # trickling, and silent
        with socket.create_connection(("127.0.0.1", server)) as sock:
            sock.sendall(start)
            opened = time.monotonic()
            answer = _read_all(sock)
            held = time.monotonic() - opened
        assert answer.startswith(b"HTTP/1.1 408")
        assert b'"code": "request_timeout"' in answer
        assert HEADER_S * 0.8 <= held < HEADER_S + 1.5


def test_a_kept_alive_connection_gets_a_fresh_deadline_per_request(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        for _ in range(3):  # each request well within its deadline, together past it
            time.sleep(HEADER_S * 0.6)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(5)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_slow_but_steady_body_is_not_cut_by_the_header_deadline(server: int) -> None:
    """The header deadline ends with the headers: a body that keeps coming (each chunk in time) is read."""
    body = b"x" * 10
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        for byte in body:  # 10 bytes over ~2 s: four header deadlines, each gap under the 1 s chunk timeout
            time.sleep(0.2)
            sock.sendall(bytes([byte]))
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400")  # read whole, then refused as the invalid JSON it is
    assert b"invalid_json" in answer


def test_a_body_that_stalls_is_a_408(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in answer


def test_healthz_stays_fast_under_hundreds_of_slow_clients(server: int) -> None:
    slow: list[socket.socket] = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", server))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            slow.append(sock)
        latencies = []
        with httpx.Client(base_url=f"http://127.0.0.1:{server}", timeout=5) as http:
            for _ in range(10):
                started = time.monotonic()
                assert http.get("/healthz").status_code == 200
                latencies.append(time.monotonic() - started)
        time.sleep(HEADER_S + 1.0)
        closed = sum(1 for sock in slow if _read_all(sock, 2.0).startswith(b"HTTP/1.1 408"))
    finally:
        for sock in slow:
            sock.close()
    median_ms = statistics.median(latencies) * 1000
    FIGURES.append(f"slow clients: with {SLOW_CLIENTS} connections stuck in their headers, GET /healthz took "
                   f"{median_ms:.1f} ms (median of 10); {closed} of them were answered 408 and closed at the "
                   f"{HEADER_S:g} s header deadline (10 s by default)")
    assert median_ms < 500
    assert closed == SLOW_CLIENTS
