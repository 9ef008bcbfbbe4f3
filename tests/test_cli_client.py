"""The client commands as a user runs them: real processes against a real server."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobcast.cli import app
from tests.support import LiveServer


@pytest.fixture
def env(server: LiveServer, tmp_path: Path) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("JOBCAST_")}
    values.update(
        JOBCAST_URL=server.url,
        JOBCAST_TOKEN=server.token("alice"),
        JOBCAST_CONFIG=str(tmp_path / "absent.toml"),
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    return values


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


def lines_of(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.fixture
def tail(env: dict[str, str], server: LiveServer) -> Iterator[tuple[queue.Queue[str], str]]:
    env = {**env, "JOBCAST_TOKEN": server.token("svc", "service")}
    seed = jobcast(env, "publish", "videos/7", "status", '{"n": 0}')
    assert seed.returncode == 0, seed.stderr
    command = ["tail", "videos/7", "--json", "--last-event-id", seed.stdout.strip()]
    process = subprocess.Popen(
        [sys.executable, "-m", "jobcast", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
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
    for command in ("submit", "watch", "jobs", "cancel", "publish", "tail", "token", "serve"):
        shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0
        assert "Examples" in shown.output, command
