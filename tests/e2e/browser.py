"""Headless Chromium driven over the DevTools protocol with `websockets` (no chromedriver, selenium or npm).

Needs the Debian package `chromium`; without it a test using the fixture is skipped, except under CI=true,
where it fails. Shared by the dashboard's browser tests (embedded, and on the compose topology).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

__all__ = ["Page", "chromium"]

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--force-device-scale-factor=1", "--window-size=1280,1000",
         "--remote-debugging-port=0"]


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[str]:
    """Starts headless Chromium with a fresh profile; yields the DevTools websocket URL of its page."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: install the Debian packages chromium and chromium-driver")
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    profile = tmp_path / "profile"
    proc = subprocess.Popen([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"  # Chromium writes its chosen port here
        deadline = time.monotonic() + 30
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            assert proc.poll() is None, "chromium exited at startup"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = port_file.read_text().splitlines()[0]
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        yield pages[0]["webSocketDebuggerUrl"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


class Page:
    """A minimal DevTools protocol client for one page: calls, script evaluation, error collection."""

    def __init__(self, ws: ClientConnection) -> None:
        """Wraps an open DevTools websocket."""
        self.ws, self.last_id = ws, 0
        self.errors: list[str] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Sends one command and returns its result, noting script errors among the events in between."""
        self.last_id += 1
        await self.ws.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("id") == self.last_id:
                assert "error" not in message, f"{method}: {message['error']}"
                result: dict[str, Any] = message["result"]
                return result
            self._note(message)

    def _note(self, event: dict[str, Any]) -> None:
        """Keeps uncaught exceptions, console errors and failed resource loads."""
        params = event.get("params", {})
        if event.get("method") == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(json.dumps(params.get("args"))[:500])
        elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])

    async def js(self, expression: str) -> Any:
        """Evaluates an expression in the page and returns its JSON value."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float, what: str) -> Any:
        """Polls an expression until it is truthy."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; page says: "
                             f"{await self.js('document.body.innerText.slice(0, 800)')}")

    async def goto(self, url: str) -> None:
        """Navigates and waits for the page's script to have run."""
        await self.call("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete' && !!document.querySelector('#app > *')",
                            15, f"{url} to load")

    async def upload(self, selector: str, path: Path) -> None:
        """Puts a file into a file input, as a user picking it would."""
        document = await self.call("DOM.getDocument")
        node = await self.call("DOM.querySelector", nodeId=document["root"]["nodeId"], selector=selector)
        await self.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(path)])

    async def screenshot(self, *paths: Path) -> None:
        """Saves a PNG of the whole page (not just the window) to each path."""
        height = (await self.call("Page.getLayoutMetrics"))["cssContentSize"]["height"]
        await self.call("Emulation.setDeviceMetricsOverride", width=1280, height=int(height) + 10,
                        deviceScaleFactor=1, mobile=False)
        png = base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
        await self.call("Emulation.clearDeviceMetricsOverride")

    async def allow_downloads(self, folder: Path) -> None:
        """Saves downloads into `folder` without asking, as a user's browser would with a default folder."""
        await self.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(folder))

    async def downloaded(self, path: Path, timeout_s: float) -> bytes:
        """Waits until Chromium has finished writing `path` (no partial .crdownload left); returns it."""
        deadline = time.monotonic() + timeout_s
        while not path.exists() or list(path.parent.glob("*.crdownload")):
            if time.monotonic() > deadline:
                raise AssertionError(f"{path.name} was not downloaded; the folder holds "
                                     f"{sorted(p.name for p in path.parent.iterdir())}")
            await asyncio.sleep(0.2)
        return path.read_bytes()

