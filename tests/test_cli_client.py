"""The client commands as a user runs them: real processes against a real server."""

from __future__ import annotations

import asyncio
import io
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from jobcast.cli import app
from jobcast.cli_render import JobProgress, jobs_table
from jobcast.client import Event, Job
from tests.support import LiveServer, eventually
from tests.test_client_streams import Proxy, reauthing_server


def cli_env(url: str, token: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a `jobcast` process: this server and token, no config file."""
    values = {k: v for k, v in os.environ.items() if not k.startswith("JOBCAST_")}
    values.update(
        JOBCAST_URL=url,
        JOBCAST_TOKEN=token,
        JOBCAST_CONFIG=str(tmp_path / "absent.toml"),
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    return values


@pytest.fixture
def env(server: LiveServer, tmp_path: Path) -> dict[str, str]:
    return cli_env(server.url, server.token("alice"), tmp_path)


def jobcast(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobcast", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_submit_and_watch_exit_with_the_jobs_outcome(env: dict[str, str]) -> None:
    done = jobcast(env, "submit", "demo", "-p", "steps=3", "-p", "delay=0.05", "--watch")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0]
    assert "succeeded" in done.stdout

    again = jobcast(env, "watch", job_id)
    assert again.returncode == 0

    failing = jobcast(
        env, "submit", "demo", "--params", '{"steps": 3, "delay": 0.05, "fail_at": 2}'
    )
    assert failing.returncode == 0
    watched = jobcast(env, "watch", failing.stdout.strip(), "--json")
    assert watched.returncode == 1
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    assert lines[0]["type"] == "snapshot"
    assert lines[-1]["type"] == "failed"
    assert lines[-1]["data"]["error"]["type"] == "DemoFailure"


def test_watch_timeout_exits_5_and_cancelled_exits_3(env: dict[str, str]) -> None:
    slow = jobcast(env, "submit", "demo", "-p", "steps=100", "-p", "delay=0.2", "--json")
    job_id = json.loads(slow.stdout)["id"]
    assert jobcast(env, "watch", job_id, "--timeout", "0.5").returncode == 5
    cancelled = jobcast(env, "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert job_id in cancelled.stdout
    assert jobcast(env, "watch", job_id).returncode == 3


def test_jobs_lists_and_filters(env: dict[str, str]) -> None:
    job_id = jobcast(env, "submit", "demo", "-p", "steps=1", "--watch", "--json").stdout
    first = json.loads(job_id.splitlines()[0])["data"]["id"]
    table = jobcast(env, "jobs")
    assert table.returncode == 0
    assert first in table.stdout
    assert "succeeded" in table.stdout
    listed = jobcast(env, "jobs", "--state", "succeeded", "--kind", "demo", "--json")
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [first]
    assert jobcast(env, "jobs", "--state", "running").stdout.strip() == "no jobs"


def test_tags_metadata_and_input_from_the_command_line(
    make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = make_server(handlers=["tests.handlers"])
    env = cli_env(server.url, server.token("alice"), tmp_path)
    tagged = jobcast(
        env, "submit", "approval", "--tag", "review", "--metadata", '{"doc": "a.pdf"}', "--json"
    )
    assert tagged.returncode == 0, tagged.stderr
    job_id = json.loads(tagged.stdout)["id"]
    listed = jobcast(env, "jobs", "--tag", "review", "--json")
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [job_id]

    def waiting() -> bool:
        job = httpx.get(f"{server.url}/api/jobs/{job_id}", headers=server.auth("alice")).json()
        return job["waiting"] is not None

    asyncio.run(eventually(waiting, timeout=10))
    refused = jobcast(env, "input", job_id, "approve", '{"approved": "maybe"}')
    assert refused.returncode != 0 and "approved" in refused.stderr
    given = jobcast(env, "input", job_id, "approve", '{"approved": true}')
    assert given.returncode == 0, given.stderr
    watched = jobcast(env, "watch", job_id, "--json")
    final = json.loads(watched.stdout.splitlines()[-1])["data"]
    assert final["metadata"] == {"doc": "a.pdf"} and final["result"]["approved"] is True
    bad = jobcast(env, "submit", "demo", "--metadata", "[1]")
    assert bad.returncode == 2 and "--metadata must be a JSON object" in bad.stderr
    items = '[{"kind": "demo", "params": {"steps": 1}}, {"kind": "demo", "params": {"steps": 1}}]'
    batch = jobcast(env, "batch", items, "--tag", "nightly")
    assert batch.returncode == 0, batch.stderr
    batch_id = batch.stdout.strip()
    assert jobcast(env, "watch", batch_id).returncode == 0
    children = jobcast(env, "jobs", "--parent", batch_id, "--json")
    assert len(children.stdout.splitlines()) == 2


def lines_of(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def start_tail(env: dict[str, str], topic: str, last_event_id: str) -> subprocess.Popen[str]:
    """``jobcast tail TOPIC --json`` resuming after ``last_event_id``, its stdout piped."""
    command = ["tail", topic, "--json", "--last-event-id", last_event_id]
    return subprocess.Popen(
        [sys.executable, "-m", "jobcast", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


@pytest.fixture
def tail(env: dict[str, str], server: LiveServer) -> Iterator[tuple[queue.Queue[str], str]]:
    env = {**env, "JOBCAST_TOKEN": server.token("svc", "service")}
    seed = jobcast(env, "publish", "videos/7", "status", '{"n": 0}')
    assert seed.returncode == 0, seed.stderr
    process = start_tail(env, "videos/7", seed.stdout.strip())
    try:
        yield lines_of(process), env["JOBCAST_TOKEN"]
    finally:
        process.terminate()
        process.wait(10)
        assert process.stdout is not None
        process.stdout.close()


def test_publish_and_tail_round_trip(
    env: dict[str, str], tail: tuple[queue.Queue[str], str]
) -> None:
    lines, service_token = tail
    env = {**env, "JOBCAST_TOKEN": service_token}
    ids = [
        jobcast(env, "publish", "videos/7", "status", data).stdout.strip()
        for data in ('{"n": 1}', "plain text")
    ]
    got = [json.loads(lines.get(timeout=10)) for _ in ids]
    assert [line["id"] for line in got] == ids
    assert [line["data"] for line in got] == [{"n": 1}, "plain text"]


def test_helpful_errors_without_tracebacks(env: dict[str, str], tmp_path: Path) -> None:
    down = jobcast({**env, "JOBCAST_URL": "http://127.0.0.1:9"}, "jobs")
    assert down.returncode == 4
    assert "jobcast serve" in down.stderr
    bad = jobcast({**env, "JOBCAST_TOKEN": "not-a-token"}, "jobs")
    assert bad.returncode == 4
    assert "jobcast token --sub" in bad.stderr
    missing = jobcast(env, "watch", "ffffffffffffffff000000")
    assert missing.returncode == 4
    assert "connecting" not in missing.stdout  # no progress bar for a job that is not there
    forbidden = jobcast(env, "publish", "videos/1", "status")
    assert forbidden.returncode == 4
    assert "--role service" in forbidden.stderr
    for result in (down, bad, missing, forbidden):
        assert "Traceback" not in result.stderr


def test_url_and_token_from_the_config_file(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'url = "{env["JOBCAST_URL"]}"\ntoken = "{env["JOBCAST_TOKEN"]}"\n')
    plain = {k: v for k, v in env.items() if k not in ("JOBCAST_URL", "JOBCAST_TOKEN")}
    listed = jobcast({**plain, "JOBCAST_CONFIG": str(config)}, "jobs")
    assert listed.returncode == 0, listed.stderr


def test_every_command_has_help_with_examples() -> None:
    runner = CliRunner()  # in-process: help text needs no server, and processes are slow
    commands = ("submit", "watch", "jobs", "cancel", "publish", "tail", "token", "serve")
    for command in (*[[name, "--help"] for name in commands], ["--help"]):
        shown = runner.invoke(app, command, env={"COLUMNS": "200"})
        assert shown.exit_code == 0
        assert "Examples" in shown.output, command


def test_an_unknown_state_is_a_usage_error() -> None:
    shown = CliRunner().invoke(app, ["jobs", "--state", "bogus"], env={"COLUMNS": "200"})
    assert shown.exit_code == 2
    assert "queued, running, succeeded, failed, cancelled" in shown.output


def test_url_and_token_flags_win_over_the_environment(
    env: dict[str, str], server: LiveServer
) -> None:
    plain = {k: v for k, v in env.items() if k not in ("JOBCAST_URL", "JOBCAST_TOKEN")}
    listed = jobcast(plain, "jobs", "--url", server.url, "--token", server.token("alice"))
    assert (listed.returncode, listed.stdout.strip()) == (0, "no jobs"), listed.stderr
    elsewhere = jobcast({**env, "JOBCAST_URL": "http://127.0.0.1:9"}, "jobs", "--url", server.url)
    assert elsewhere.returncode == 0, elsewhere.stderr
    refused = jobcast(env, "jobs", "--token", "not-a-token")
    assert refused.returncode == 4
    assert "refused the token" in refused.stderr


def test_submit_a_file_from_the_command_line(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    path.write_text("one\ntwo\nthree\n")
    done = jobcast(env, "submit", "ingest", "--file", str(path), "--watch", "--json")
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.splitlines()[-1])
    assert last["type"] == "succeeded"
    assert last["data"]["input"]["filename"] == "lines.txt"
    assert last["data"]["input"]["size"] == path.stat().st_size
    assert last["data"]["result"]["lines"] == 3
    missing = jobcast(env, "submit", "ingest", "--file", str(tmp_path / "absent.txt"))
    assert missing.returncode == 2


def test_tail_gives_up_on_a_token_that_is_never_renewed(env: dict[str, str]) -> None:
    # A server that ends every stream with `reauth` (an expired token it still accepts).
    fake = Proxy(reauthing_server()).start()  # type: ignore[arg-type]
    try:
        tailed = jobcast(env, "tail", "videos/1", "--url", fake.url, "--token", "expired")
    finally:
        fake.stop()
    assert tailed.returncode == 4
    assert tailed.stderr.count("-- reauth") == 2
    assert "jobcast token --sub" in tailed.stderr


# -- what the commands draw ----------------------------------------------------------------


def rendered(renderable: Any, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    text: str = console.file.getvalue()  # type: ignore[attr-defined]
    return text


def job_data(**fields: Any) -> dict[str, Any]:
    job = {
        "id": "18ea3c2d39569917be5249",
        "kind": "transcribe",
        "state": "running",
        "progress": 0.0,
        "stage": None,
        "message": None,
        "eta_seconds": None,
        "seq": 1,
        "owner": "alice",
        "params": {},
        "created_at": "2030-01-02T03:04:05.678Z",
        "started_at": "2030-01-02T03:04:05Z",
        "updated_at": "2030-01-02T03:04:05Z",
        "finished_at": None,
        "input": None,
        "result": None,
        "error": None,
        "attempts": 1,
        "readers": [],
    }
    return {**job, **fields}


def test_the_progress_bar_shows_percentage_stage_message_elapsed_and_eta() -> None:
    bar = JobProgress(Console(file=io.StringIO()), "18ea3c2d39569917be5249")
    bar.update(Event("snapshot", job_data(progress=10.0, stage="downloading"), "e-1"))
    assert "10%" in rendered(bar.progress, 120)
    assert "downloading" in rendered(bar.progress, 120)
    update = {"progress": 42.4, "stage": "transcribing", "message": "12/30", "eta_seconds": 83}
    bar.update(Event("progress", {"id": "18ea3c2d39569917be5249", **update}, "e-2"))
    text = rendered(bar.progress, 120)
    assert "42%" in text
    assert "transcribing" in text
    assert "12/30" in text
    assert "ETA 1:23" in text
    final = job_data(
        state="succeeded", progress=100.0, finished_at="2030-01-02T03:06:10Z", eta_seconds=None
    )
    bar.update(Event("succeeded", final, "e-3"))
    text = rendered(bar.progress, 120)
    assert "100%" in text
    assert "succeeded" in text
    assert "2:05" in text  # elapsed: from started_at to finished_at
    assert "ETA -:--" in text


def test_the_jobs_table_fits_80_columns() -> None:
    jobs = [
        Job.from_dict(job_data(stage="downloading", owner="worker-service-1")),
        Job.from_dict(job_data(id="18ea3c2d39569917be5250", kind="demo", stage="parse")),
    ]
    text = rendered(jobs_table(jobs), 80)
    lines = text.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines)
    header = lines[0].split()
    assert header == ["ID", "KIND", "STATE", "DONE", "STAGE", "OWNER", "CREATED"]
    assert "18ea3c2d39569917be5249" in lines[1]  # whole: it is pasted into other commands
    assert "2030-01-02 03:04" in lines[1]
    assert lines[2].split()[4:6] == ["parse", "alice"]


def test_rerun_and_scheduling_options_from_the_command_line(env: dict[str, str]) -> None:
    first = jobcast(
        env,
        "submit",
        "demo",
        "-p",
        "steps=1",
        "--priority",
        "5",
        "--idempotency-key",
        "cli-1",
        "--json",
    )
    assert first.returncode == 0, first.stderr
    job_id = json.loads(first.stdout)["id"]
    again = jobcast(
        env, "submit", "demo", "-p", "steps=1", "--priority", "5", "--idempotency-key", "cli-1"
    )
    assert again.returncode == 0 and again.stdout.strip() == job_id  # the same job
    assert jobcast(env, "watch", job_id).returncode == 0
    rerun = jobcast(env, "rerun", job_id, "--watch")
    assert rerun.returncode == 0, rerun.stderr
    new_id = rerun.stdout.splitlines()[0]
    assert new_id != job_id and "succeeded" in rerun.stdout
    bad = jobcast(env, "submit", "demo", "--priority", "1000")
    assert bad.returncode == 4 and "priority" in bad.stderr


def test_the_progress_bar_says_when_an_attempt_failed_and_a_retry_waits() -> None:
    out = io.StringIO()
    bar = JobProgress(Console(file=out, width=200), "18ea3c2d39569917be5249")
    running = job_data(state="running", attempts=1, max_attempts=3)
    bar.update(Event("state", running, "e-1"))
    assert "running (attempt 1/3)" in rendered(bar.progress, 120)
    waiting = job_data(
        state="queued",
        attempts=1,
        max_attempts=3,
        next_attempt_at="2030-01-02T03:07:00Z",
        last_error={"type": "ConnectionError", "message": "reset by peer"},
    )
    bar.update(Event("retrying", waiting, "e-2"))
    assert "retrying" in rendered(bar.progress, 120)
    said = out.getvalue()
    assert "attempt 1 of 3 failed" in said and "ConnectionError: reset by peer" in said
    assert "2030-01-02T03:07:00Z" in said
