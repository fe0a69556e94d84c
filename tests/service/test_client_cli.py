"""The Python client and the `secateur` client commands (submit, status, jobs, ...) against a real server.

A fake worker moves the job rows through the repository the way a real worker does, so no engine runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.api import routes_events
from service.auth.service import KeyService
from service.cli import main as secateur
from service.client import ApiError, Job, SecateurClient, iter_sse
from service.client_cli import main
from service.client_render import ProgressView, describe
from service.db.session import session_scope
from service.jobs import repository
from tests.service.conftest import npz_dataset, safetensors_model
from tests.service.live import TENANT, Live, sample_report, serve

pytestmark = pytest.mark.timeout(60)  # a broken fake worker must not leave `--wait` blocking for long


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server for the module, its event streams polling fast so tests stay short."""
    poll, routes_events.POLL_S = routes_events.POLL_S, 0.05
    try:
        with serve(tmp_path_factory.mktemp("server")) as server:
            yield server
    finally:
        routes_events.POLL_S = poll


@pytest.fixture
def env(live: Live, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """Points the CLI at the live server; cancels what a test left queued (the server caps active jobs)."""
    monkeypatch.setenv("SECATEUR_URL", live.url)
    monkeypatch.delenv("SECATEUR_API_KEY", raising=False)
    yield live
    with SecateurClient(live.url) as client:
        for job in client.list(status="queued", limit=50).jobs:
            client.cancel(job.id)


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny safetensors model and .npz dataset on disk."""
    model, dataset = tmp_path / "model.safetensors", tmp_path / "data.npz"
    model.write_bytes(safetensors_model())
    dataset.write_bytes(npz_dataset())
    return model, dataset


def newest_queued(live: Live, timeout_s: float = 45.0) -> str:
    """Waits for a job to be queued and returns the newest queued job's id.

    A submission's sandboxed check imports torch in a child: over 10 s on a loaded 2-core machine.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session_scope(live.worker.context.jobs.sessions) as session:
            jobs = repository.list_jobs(session, tenant=TENANT, status="queued", limit=1, cursor=None)
        if jobs:
            return jobs[0].id
        time.sleep(0.02)
    raise AssertionError("no job was queued")


def in_background(target: Callable[[], None]) -> threading.Thread:
    """Runs `target` in a thread (the fake worker while the CLI blocks in the foreground)."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def run_job(live: Live, outcome: str = "succeeded", job_id: str | None = None,
            following: threading.Event | None = None) -> Callable[[], None]:
    """A fake worker run: claim, evaluate, two finetuning epochs with metrics, then `outcome`; with
    `following`, it starts only once the client follows the job (a stream shows states, not history)."""

    def work() -> None:
        """Drives the job with pauses longer than the event poll, so each state is seen."""
        if following is not None:
            assert following.wait(120), "the client never followed the job"
        jid = job_id or newest_queued(live)
        w = live.worker
        epoch = w.claim(jid)
        w.progress(jid, epoch, "evaluating", fraction=0.05)
        time.sleep(0.2)
        for e in (1, 2):
            w.progress(jid, epoch, "finetuning", fraction=0.3 * e, epoch=e, epochs=2, step=10 * e,
                       metrics={"loss": 1.0 / e, "accuracy": 0.5 + 0.1 * e})
            time.sleep(0.2)
        if outcome == "succeeded":
            w.succeed(jid, epoch, sample_report(), {"model.onnx": b"onnx-bytes", "model.onnx.zst": b"zst"})
        elif outcome == "failed":
            w.finish(jid, epoch, "failed", error_code="export_mismatch", error_message="ONNX output differs")
        else:
            with session_scope(live.worker.context.jobs.sessions) as session:
                assert repository.request_cancel(session, tenant=TENANT, job_id=jid) is not None
            w.finish(jid, epoch, "cancelled")

    return work


def submit_args(inputs: tuple[Path, Path], *extra: str) -> list[str]:
    """The command line of a valid submission."""
    return ["submit", str(inputs[0]), str(inputs[1]), "--method", "l1", "--architecture", "mlp",
            "--pruning-ratio", "0.5", "--epochs", "2", *extra]


def test_submit_wait_shows_progress_and_exits_zero(
    env: Live, inputs: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    following = threading.Event()
    events = SecateurClient.events

    def follow(client: SecateurClient, job_id: str, last_event_id: str | None = None) -> Iterator[Any]:
        """Lets the fake worker start once the stream has sent its first event (a late client would
        miss epoch 1: a stream shows the job's states from when it opens)."""
        for event in events(client, job_id, last_event_id):
            following.set()
            yield event

    monkeypatch.setattr(SecateurClient, "events", follow)
    worker = in_background(run_job(env, following=following))
    assert main(submit_args(inputs, "--wait")) == 0
    worker.join(5)
    out, err = capsys.readouterr()
    job_id = out.splitlines()[0]
    assert f"{job_id} succeeded: accuracy 91.00% -> 89.00%, params 270,000 -> 140,000" in out
    lines = err.splitlines()
    # Not a TTY: one plain line per status/stage/epoch change, in order, with epoch, metrics and ETA.
    epoch1 = next(i for i, line in enumerate(lines) if "epoch 1/2" in line)
    epoch2 = next(i for i, line in enumerate(lines) if "epoch 2/2" in line)
    assert epoch1 < epoch2
    assert lines[-1].startswith("succeeded")
    assert "finetuning" in lines[epoch2]
    assert "loss 0.5" in lines[epoch2]
    assert "accuracy 0.7" in lines[epoch2]
    assert "ETA" in lines[epoch2]
    assert "\r" not in err
    with session_scope(env.worker.context.jobs.sessions) as session:
        row = repository.get_job(session, tenant=TENANT, job_id=job_id)
    assert row is not None
    assert row.config["finetune"]["epochs"] == 2
    assert row.config["target"] == {"pruning_ratio": 0.5}
    assert row.model_sha256 == hashlib.sha256(inputs[0].read_bytes()).hexdigest()  # uploaded intact


def test_wait_json_prints_only_the_final_job(env: Live, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = env.worker.insert()
    worker = in_background(run_job(env, "succeeded", job_id))
    assert main(["status", job_id, "--wait", "--json"]) == 0
    worker.join(5)
    final = json.loads(capsys.readouterr().out)  # one JSON document: no summary line
    assert final["status"] == "succeeded"
    assert final["links"]["model"] == f"/jobs/{job_id}/artifacts/model.onnx"


@pytest.mark.parametrize(("outcome", "code", "message"), [
    ("failed", 1, "error: export_mismatch: ONNX output differs"),
    ("cancelled", 3, "error: cancelled: job"),
])
def test_wait_on_an_unsuccessful_job_prints_the_error_and_exits_nonzero(
    env: Live, capsys: pytest.CaptureFixture[str], outcome: str, code: int, message: str,
) -> None:
    job_id = env.worker.insert()
    worker = in_background(run_job(env, outcome, job_id))
    assert main(["status", job_id, "--wait"]) == code
    worker.join(5)
    assert message in capsys.readouterr().err


def test_config_file_is_merged_with_flags(
    env: Live, inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "job.json"
    config.write_text('{"method": "l1", "architecture": "mlp", "target": {"pruning_ratio": 0.3},'
                      ' "finetune": {"epochs": 5, "lr": 0.05}, "seed": 7}')
    assert main(["submit", str(inputs[0]), str(inputs[1]), "--config", str(config), "--epochs", "1"]) == 0
    job = SecateurClient(env.url).get(capsys.readouterr().out.strip())
    assert job.raw["config"]["finetune"]["epochs"] == 1
    assert job.raw["config"]["finetune"]["lr"] == 0.05
    assert job.raw["config"]["seed"] == 7
    assert job.raw["config"]["target"] == {"pruning_ratio": 0.3}


def test_refusals_print_the_servers_code_and_exit_one(
    env: Live, inputs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", str(inputs[0]), str(inputs[1]), "--method", "weightmom", "--architecture", "mlp",
                 "--pruning-ratio", "0.5"]) == 1
    assert capsys.readouterr().err.startswith("error: invalid_config: ")
    assert main(["status", "no-such-job"]) == 1
    assert capsys.readouterr().err.startswith("error: not_found: ")
    assert main(["submit", "missing.onnx", str(inputs[1]), "--method", "l1", "--pruning-ratio", "0.5"]) == 1
    assert "missing.onnx" in capsys.readouterr().err


def test_unreachable_server_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SECATEUR_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert main(["jobs"]) == 1
    assert capsys.readouterr().err.startswith("error: unreachable: cannot reach http://127.0.0.1:9")


def test_download_status_jobs_and_cancel(
    env: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = SecateurClient(env.url)
    done = env.worker.insert()
    run_job(env, "succeeded", done)()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["download", done, "-o", str(out_dir)]) == 0
    assert (out_dir / "model.onnx").read_bytes() == b"onnx-bytes"
    assert main(["download", done, "--name", "report.json", "-o", str(tmp_path / "r.json")]) == 0
    assert (tmp_path / "r.json").read_bytes().startswith(b'{"baseline"')
    assert client.report(done)["pruned"]["accuracy"] == 0.89
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temp file left behind
    capsys.readouterr()

    queued = env.worker.insert()
    assert main(["jobs", "--status", "queued"]) == 0
    listed = capsys.readouterr().out
    assert queued in listed
    assert done not in listed
    assert main(["status", done]) == 0
    assert capsys.readouterr().out.startswith(f"{done}  succeeded")
    assert main(["cancel", queued]) == 0
    assert capsys.readouterr().out.strip() == f"{queued}  cancelled"
    assert main(["cancel", queued]) == 1
    assert "error: already_finished" in capsys.readouterr().err
    with pytest.raises(ApiError) as refused:
        client.download(queued, "model.onnx", tmp_path)
    assert (refused.value.code, refused.value.status) == ("not_ready", 409)
    assert not (tmp_path / "model.onnx").exists()


def test_client_pages_and_polls_without_events(env: Live) -> None:
    client = SecateurClient(env.url, poll_interval_s=0.05)
    ids = {env.worker.insert() for _ in range(3)}
    first = client.list(status="queued", limit=2)
    second = client.list(status="queued", limit=2, cursor=first.next_cursor)
    assert len(first.jobs) == 2
    assert first.next_cursor is not None
    assert {job.id for job in first.jobs + second.jobs} == ids
    job_id = ids.pop()
    seen: list[Job] = []
    in_background(run_job(env, "succeeded", job_id))
    final = client.wait(job_id, on_update=seen.append, follow_events=False, timeout_s=10)
    assert final.status == "succeeded"
    assert seen[-1].status == "succeeded"
    epochs = [job.progress.epoch or 0 for job in seen if job.stage == "finetuning"]
    assert epochs == sorted(epochs)
    assert epochs[-1] == 2
    with pytest.raises(ApiError, match="wait_timeout"):
        client.wait(ids.pop(), follow_events=False, timeout_s=0.2)


def test_progress_view_draws_a_bar_in_place_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    raw: dict[str, Any] = {"id": "j1", "status": "running", "stage": "finetuning",
                           "progress": {"fraction": 0.5, "epoch": 3, "epochs": 10, "eta_s": 80,
                                        "metrics": {"loss": 0.25}}}
    stream = Tty()
    view = ProgressView(stream)
    view.update(Job.from_json(raw))
    view.update(Job.from_json({**raw, "status": "succeeded", "progress": {"fraction": 1.0}}))
    text = stream.getvalue()
    assert text.startswith("\rfinetuning  [############------------]   50%  epoch 3/10  loss 0.25  ETA 1m20s")
    assert "\rsucceeded  [########################]  100%" in text
    assert text.endswith("\n")
    assert describe(Job.from_json({"id": "j", "status": "queued"}), bar=False) == "queued"


def test_sse_parser_follows_the_spec() -> None:
    stream = ["retry: 500", "", ": keepalive", "", "id: 7", "event: stage", "data: {\"a\":", "data: 1}", "",
              "data: x", ""]
    events = list(iter_sse(stream))
    assert [(e.event, e.id, e.retry_ms) for e in events] == [("stage", "7", 500), ("message", "7", 500)]
    assert events[0].json() == {"a": 1}
    assert events[0].data == '{"a":\n1}'


def test_api_key_is_sent_and_scopes_what_the_cli_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve(tmp_path / "keys-server", auth="keys") as live:
        keys = KeyService(live.worker.context.jobs.sessions)
        token, other = keys.create(tenant="acme")[1], keys.create(tenant="other")[1]
        job_id = live.worker.insert(tenant="acme")
        monkeypatch.setenv("SECATEUR_URL", live.url)
        monkeypatch.delenv("SECATEUR_API_KEY", raising=False)
        assert main(["jobs"]) == 1
        assert capsys.readouterr().err.startswith("error: unauthorized: ")
        monkeypatch.setenv("SECATEUR_API_KEY", other)
        assert main(["status", job_id]) == 1  # another tenant's job does not exist for this key
        assert capsys.readouterr().err.startswith("error: not_found: ")
        monkeypatch.setenv("SECATEUR_API_KEY", token)
        assert main(["jobs"]) == 0
        assert job_id in capsys.readouterr().out
        in_background(run_job(live, "failed", job_id))
        assert main(["status", job_id, "--wait"]) == 1  # followed over the authenticated event stream
        assert "error: export_mismatch: " in capsys.readouterr().err
        # --url and --api-key win over the environment (here pointing at nothing, with another key).
        monkeypatch.setenv("SECATEUR_URL", "http://127.0.0.1:9")
        monkeypatch.setenv("SECATEUR_API_KEY", other)
        assert main(["status", job_id, "--url", live.url, "--api-key", token, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["status"] == "failed"


def test_version_and_help_name_the_environment_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        secateur(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("secateur ")
    for argv in (["--help"], ["jobs", "--help"], ["events", "--help"]):
        with pytest.raises(SystemExit):
            secateur(argv)
        text = capsys.readouterr().out
        assert "SECATEUR_URL" in text
        assert "SECATEUR_API_KEY" in text
        assert "exit codes:" in text
        assert "3  the job was cancelled" in text


def test_every_command_speaks_json(env: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = env.worker.insert()
    run_job(env, "succeeded", done)()
    queued = env.worker.insert()

    def json_of(*argv: str) -> Any:
        """Runs a command with --json; returns its stdout parsed (it must be one JSON document)."""
        assert main([*argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    assert json_of("status", done)["status"] == "succeeded"
    listed = json_of("jobs", "--status", "queued")
    assert queued in [job["id"] for job in listed["jobs"]]
    assert "next_cursor" in listed
    written = json_of("download", done, "-o", str(tmp_path))
    assert (written["path"], written["bytes"]) == (str(tmp_path / "model.onnx"), len(b"onnx-bytes"))
    assert json_of("report", done)["pruned"]["accuracy"] == 0.89
    assert main(["events", done, "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["event"], e["job"]["status"]) for e in events] == [("end", "succeeded")]
    assert json_of("cancel", queued)["status"] == "cancelled"
    assert json_of("delete", done) == {"id": done, "deleted": True}
    assert main(["status", done]) == 1
    assert "error: not_found: " in capsys.readouterr().err


def test_jobs_takes_back_the_cursor_it_prints(env: Live, capsys: pytest.CaptureFixture[str]) -> None:
    ids = {env.worker.insert() for _ in range(3)}
    assert main(["jobs", "--status", "queued", "--limit", "2"]) == 0
    out, err = capsys.readouterr()
    hint = err.strip()
    assert hint.startswith("(more: secateur jobs --cursor ")
    cursor = hint.removeprefix("(more: secateur jobs --cursor ").rstrip(")")
    assert main(["jobs", "--status", "queued", "--limit", "2", "--cursor", cursor]) == 0
    rest, end = capsys.readouterr()
    assert {line.split()[0] for line in (out + rest).splitlines()} == ids
    assert end == ""  # the last page names no further cursor


def test_report_events_and_delete_for_people(env: Live, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = env.worker.insert()
    in_background(run_job(env, "succeeded", job_id))
    assert main(["events", job_id]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("status")
    assert any(line.startswith("stage") and "finetuning" in line for line in lines)
    assert lines[-1].split()[:2] == ["end", "succeeded"]
    assert main(["report", job_id]) == 0
    table = capsys.readouterr().out
    assert "accuracy                  91.00%        89.00%" in table
    assert "latency b1 (ms)" in table
    assert "ONNX check: passed" in table
    running = env.worker.insert()
    env.worker.claim(running)
    assert main(["delete", running]) == 1
    assert "error: not_finished: " in capsys.readouterr().err
    assert main(["delete", job_id]) == 0
    assert capsys.readouterr().out.strip() == f"{job_id}  deleted"
