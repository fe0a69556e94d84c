"""The dashboard end to end in headless Chromium: submit through the form, watch the job run on a real
worker, check the curves and layer bars are drawn, the report page loads, and no script error occurs; and
a sweep of five pruning ratios of ResNet-20 on stored inputs, plotted with its Pareto front.

Chromium is driven by tests/e2e/browser.py (DevTools protocol over `websockets`; the Debian package
`chromium`, required under CI=true). Screenshots go to tests/e2e/artifacts/ (and, with
SECATEUR_UPDATE_DOCS=1, to docs/dashboard.png and docs/sweep.png, the README's pictures).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
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
from tests.e2e.sweep_inputs import sweep_inputs, uses_real_data
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
    with serve(root, max_active_jobs_per_tenant=8) as live:  # room for a sweep's five jobs
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


RATIOS = (0.2, 0.35, 0.5, 0.65, 0.8)


def store_inputs(live: Live, model: Path, dataset: Path) -> tuple[str, str]:
    """Stores the model and the dataset once each (POST /models, /datasets); returns their ids."""
    ids = []
    for kind, path in (("models", model), ("datasets", dataset)):
        with path.open("rb") as f:
            stored = httpx.post(f"{live.url}/{kind}", files={"file": (path.name, f)}, timeout=120)
        assert stored.status_code == 201, stored.text
        ids.append(stored.json()["id"])
    return ids[0], ids[1]


def stored_copies(root: Path, data: bytes) -> int:
    """How many objects in the store hold exactly these bytes."""
    digest = hashlib.sha256(data).hexdigest()
    return sum(hashlib.sha256(p.read_bytes()).hexdigest() == digest for p in root.rglob("*") if p.is_file())


async def sweep_scenario(ws_url: str, live: Live, inputs: tuple[str, str], downloads: Path) -> str:
    """Starts the sweep with the form, watches it finish, checks the plot, a hover, a download, the list.

    Returns the sweep's id.
    """
    async with connect(ws_url, max_size=None) as ws:
        page = Page(ws)
        for domain in ("Page", "Runtime", "Log", "DOM"):
            await page.call(f"{domain}.enable")
        await page.allow_downloads(downloads)
        await page.goto(f"{live.url}/#/sweeps")
        await page.wait_for("document.getElementById('sweep-form') !== null", 15, "the sweep form")
        lr = 0.01 if uses_real_data() else 0.05  # a trained model's finetuning, or a random one's training
        extra = {"data": {"augment": False}, "finetune": {"batch_size": 64, "lr": lr}}
        await page.js(f"""(() => {{
            const f = document.getElementById("sweep-form");
            f.model_id.value = {json.dumps(inputs[0])}; f.dataset_id.value = {json.dumps(inputs[1])};
            f.method.value = "l1"; f.architecture.value = "resnet20"; f.kind.value = "pruning_ratio";
            f.values.value = {json.dumps(",".join(map(str, RATIOS)))}; f.epochs.value = "1";
            f.extra.value = {json.dumps(json.dumps(extra))};
            document.getElementById("sweep-button").click();
        }})()""")
        opened = "location.hash.startsWith('#/sweeps/') && location.hash.slice(9)"
        sweep_id = str(await page.wait_for(opened, 60, "the new sweep's page"))
        await page.wait_for("document.body.dataset.sweepStatus === 'succeeded'", 1500, "the sweep to succeed")
        sweep = httpx.get(f"{live.url}/sweeps/{sweep_id}").json()
        assert await page.js("document.getElementById('sweep-plot').dataset.points") == "5"
        on_front = await page.js("[...document.querySelectorAll('#sweep-plot circle.on-front')]"
                                 ".map(c => c.dataset.job)")
        assert sorted(on_front) == sorted(sweep["pareto_by"]["flops"])
        line = await page.js("document.querySelector('#sweep-plot polyline.front') !== null")
        assert line == (len(on_front) > 1)
        first = sweep["points"][0]["job_id"]
        await page.js(f"document.querySelector('#sweep-plot circle[data-job=\"{first}\"]')"
                      ".dispatchEvent(new MouseEvent('mouseenter'))")
        tip = await page.js("(() => { const t = document.getElementById('sweep-tooltip');"
                            " return {hidden: t.hidden, job: t.dataset.job, text: t.textContent}; })()")
        assert tip["hidden"] is False
        assert tip["job"] == first
        assert f"job {first}" in tip["text"]
        assert await page.js("document.querySelectorAll('#points-table tbody a.button').length") == 5
        docs = [ROOT / "docs" / "sweep.png"] if os.environ.get("SECATEUR_UPDATE_DOCS") else []
        await page.screenshot(ARTIFACTS / "dashboard-sweep.png", *docs)

        last = sweep["points"][-1]["job_id"]
        await page.js(f"document.querySelector('#points-table tr[data-job=\"{last}\"] a.button').click()")
        onnx = await page.downloaded(downloads / "model.onnx", 30)
        assert onnx == httpx.get(f"{live.url}/jobs/{last}/artifacts/model.onnx").content

        await page.goto(f"{live.url}/#/sweeps")
        row = f"document.querySelector('#sweeps-body tr[data-id=\"{sweep_id}\"]')"
        await page.wait_for(f"{row} !== null", 15, "the sweep in the list")
        await page.call("Runtime.evaluate", expression="0")  # drain events emitted by the last page
        assert page.errors == []
    return sweep_id


@pytest.mark.timeout(1800)
def test_sweep_of_five_ratios_plots_its_front(chromium: str, server: Live, tmp_path: Path) -> None:
    model, dataset = sweep_inputs(tmp_path / "inputs")
    ids = store_inputs(server, model, dataset)
    sweep_id = asyncio.run(sweep_scenario(chromium, server, ids, tmp_path / "downloads"))

    sweep = httpx.get(f"{server.url}/sweeps/{sweep_id}").json()
    assert sweep["status"] == "succeeded"
    assert sweep["pareto"]
    assert set(sweep["pareto"]) <= {p["job_id"] for p in sweep["points"]}
    flops = [p["flops"] for p in sweep["points"]]
    assert flops == sorted(flops, reverse=True)  # a higher pruning ratio removes more
    assert stored_copies(tmp_path / "data" / "objects", dataset.read_bytes()) == 1
    # The dense model was measured by one point and reused by the other four.
    shared = [httpx.get(f"{server.url}/jobs/{p['job_id']}/report").json()["baseline_shared"]
              for p in sweep["points"]]
    assert [s["reused"] for s in shared].count(False) == 1
    assert len({s["measured_by"] for s in shared}) == 1
