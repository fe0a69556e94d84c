"""The dashboard end to end in headless Chromium: submit through the form, watch the job run on a real
worker, check the curves and layer bars are drawn, the report page loads, and no script error occurs.

Chromium is driven by tests/e2e/browser.py (DevTools protocol over `websockets`; the Debian package
`chromium`, required under CI=true). Screenshots go to tests/e2e/artifacts/ (and, with
SECATEUR_UPDATE_DOCS=1, to docs/dashboard.png, the README's picture).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from tests.e2e.browser import Page, chromium
from tests.service.conftest import safetensors_model
from tests.service.live import Live, serve

__all__ = ["chromium"]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Live]:
    """The API in-process under uvicorn, plus a real `secateur worker` process on the same data dir."""
    root = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECATEUR_")}
    env.update(SECATEUR_DATA_DIR=str(root), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with serve(root) as live:
        worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--loglevel=warning"],
                                  cwd=ROOT, env=env, start_new_session=True)
        try:
            yield live
        finally:
            worker.terminate()
            try:
                worker.wait(20)
            finally:
                with contextlib.suppress(ProcessLookupError):  # a job child that outlived its parent
                    os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()


PAINTED = """(() => {
  const c = document.getElementById(%s);
  const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let painted = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i]) painted++;
  return {points: Number(c.dataset.points), painted};
})()"""


async def scenario(ws_url: str, live: Live, inputs: tuple[Path, Path]) -> None:
    """Submits a job through the form and checks every part of its page, then the report page."""
    async with connect(ws_url, max_size=None) as ws:
        page = Page(ws)
        for domain in ("Page", "Runtime", "Log", "DOM"):
            await page.call(f"{domain}.enable")
        await page.goto(f"{live.url}/")
        assert await page.js("document.querySelector('#jobs-body') !== null")
        await page.upload("input[name=model]", inputs[0])
        await page.upload("input[name=dataset]", inputs[1])
        await page.js("""(() => {
            const f = document.getElementById("submit-form");
            f.method.value = "l1"; f.architecture.value = "mlp"; f.target_kind.value = "pruning_ratio";
            f.target_value.value = "0.5"; f.epochs.value = "5";
            document.getElementById("submit-button").click();
        })()""")
        job_id = (await page.wait_for("location.hash.startsWith('#/jobs/') && location.hash.slice(7)", 30,
                                      "the submitted job's page"))
        await page.wait_for("document.body.dataset.reportReady === 'true'", 180, "the job to succeed")
        assert await page.js("document.querySelector('#job-card .badge').textContent") == "succeeded"

        report = httpx.get(f"{live.url}/jobs/{job_id}/report").json()
        loss = await page.js(PAINTED % '"loss-chart"')
        accuracy = await page.js(PAINTED % '"accuracy-chart"')
        assert loss["points"] == accuracy["points"] == len(report["history"]) == 5
        assert loss["painted"] > 2000  # axes, grid, labels and the curve itself
        assert accuracy["painted"] > 2000
        bars = await page.js("document.querySelectorAll('#layers-chart rect').length")
        assert bars == 2 * len(report["layers"])  # a track and a bar per layer
        rows = await page.js("[...document.querySelectorAll('#compare-table tbody tr')]"
                             ".map(r => [...r.cells].map(c => c.textContent))")
        assert len(rows) == 9
        assert rows[0][1] == f"{100 * report['baseline']['accuracy']:.2f}%"
        assert rows[0][2] == f"{100 * report['pruned']['accuracy']:.2f}%"
        links = await page.js("[...document.querySelectorAll('#downloads a')]"
                              ".map(a => a.getAttribute('href'))")
        assert f"/jobs/{job_id}/artifacts/model.onnx" in links
        # docs/dashboard.png (the README's picture) is refreshed on request, so test runs leave clones clean.
        docs = [ROOT / "docs" / "dashboard.png"] if os.environ.get("SECATEUR_UPDATE_DOCS") else []
        await page.screenshot(ARTIFACTS / "dashboard-job.png", *docs)

        await page.goto(f"{live.url}/jobs/{job_id}/report.html")
        await page.wait_for("document.body.dataset.reportReady === 'true'", 15, "the report page")
        assert await page.js("document.querySelectorAll('#compare-table tbody tr').length") == 9

        await page.goto(f"{live.url}/")
        row = f"document.querySelector('#jobs-body tr[data-id=\"{job_id}\"]')"
        await page.wait_for(f"{row} && {row}.dataset.status === 'succeeded'", 15, "the job in the list")
        await page.screenshot(ARTIFACTS / "dashboard-list.png")
        await page.call("Runtime.evaluate", expression="0")  # drain events emitted by the last page
        assert page.errors == []


def blobs(path: Path, n_train: int = 256, n_val: int = 128) -> None:
    """Writes a small learnable .npz: two overlapping Gaussian blobs in 3-D, so finetuning visibly helps."""
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        """`n` samples (n, 3) float32 with labels (n,) int64."""
        y = rng.integers(0, 2, n)
        return (rng.normal(size=(n, 3)) + (2.0 * y - 1.0)[:, None]).astype(np.float32), y.astype(np.int64)

    (x_train, y_train), (x_val, y_val) = split(n_train), split(n_val)
    np.savez(path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)


def test_dashboard_submit_watch_and_report(chromium: str, server: Live, tmp_path: Path) -> None:
    model, dataset = tmp_path / "mlp.safetensors", tmp_path / "train.npz"
    model.write_bytes(safetensors_model())
    blobs(dataset)
    asyncio.run(scenario(chromium, server, (model, dataset)))


def test_dashboard_files_are_served_under_a_strict_policy(tmp_path: Path) -> None:
    with serve(tmp_path / "data") as live:
        for path in ("/", "/jobs/any-id/report.html"):
            page = httpx.get(live.url + path)
            assert page.status_code == 200
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert '<script src="/static/app.js" defer></script>' in page.text
        script = httpx.get(f"{live.url}/static/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "followEvents" in script.text
        assert httpx.get(f"{live.url}/static/style.css").headers["content-type"].startswith("text/css")
        for missing in ("/static/index.html", "/static/..%2Fapi%2Fapp.py", "/static/nope.js"):
            response = httpx.get(live.url + missing)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
