"""The client commands when things go wrong: one line and the documented exit status, never a
traceback, and never a command that waits for ever on a server it could not use."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from jobcast.cli import app
from jobcast.client import Client, Event
from jobcast.server.app import create_app
from tests.support import LiveServer, make_settings
from tests.test_cli_client import cli_env, jobcast, lines_of, start_tail
from tests.test_client_streams import Proxy, not_jobcast_server, take


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_all(env: dict[str, str], *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run several `jobcast` processes at once (each takes a while just to start)."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda args: jobcast(env, *args), commands))


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- a server that cannot be used from the first request on ------------------------------------


def test_watch_and_tail_of_an_unreachable_server_exit_4_at_once(tmp_path: Path) -> None:
    env = cli_env(f"http://127.0.0.1:{free_port()}", "t", tmp_path)
    # These used to retry for ever in silence (the subprocess timeout is 30 s).
    for result in run_all(env, ["watch", "abc"], ["watch", "abc", "--json"], ["tail", "a/b"]):
        assert result.returncode == 4
        assert "cannot reach the jobcast server" in result.stderr
        assert "Traceback" not in result.stderr


def read_until(fd: int, wanted: bytes, timeout: float) -> bytes:
    """What a terminal shows, read until ``wanted`` appears or ``timeout`` runs out."""
    shown = b""
    deadline = time.monotonic() + timeout
    while wanted not in shown and (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            shown += os.read(fd, 4096)
    return shown


def test_watch_shows_it_is_connecting_on_a_terminal(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        env = cli_env(f"http://127.0.0.1:{silent.getsockname()[1]}", "t", tmp_path)
        terminal, child = pty.openpty()
        process = subprocess.Popen(
            [sys.executable, "-m", "jobcast", "watch", "abc"],
            stdout=child,
            stderr=child,
            env={**env, "TERM": "xterm"},
        )
        os.close(child)
        try:
            shown = read_until(terminal, b"connecting to", timeout=20)
        finally:
            process.terminate()
            process.wait(10)
            os.close(terminal)
    assert b"connecting to http://127.0.0.1:" in shown


def bad_gateway_server() -> Starlette:
    """A proxy whose upstream is down: 502 with an HTML page, for every request."""

    async def page(request: Request) -> Response:
        return Response(b"<html>502 Bad Gateway</html>", 502, media_type="text/html")

    return Starlette(routes=[Route("/{path:path}", page, methods=["GET", "POST"])])


@pytest.fixture
def bad_gateway() -> Iterator[Proxy]:
    running = Proxy(bad_gateway_server()).start()  # type: ignore[arg-type]
    yield running
    running.stop()


def test_a_server_answering_5xx_exits_4_with_one_line(bad_gateway: Proxy, tmp_path: Path) -> None:
    env = cli_env(bad_gateway.url, "t", tmp_path)
    for result in run_all(env, ["watch", "abc"], ["tail", "a/b"], ["jobs"]):
        assert result.returncode == 4
        assert one_error_line(result) == f"error: {bad_gateway.url} answered 502 Bad Gateway"


@pytest.fixture
def not_jobcast() -> Iterator[Proxy]:
    running = Proxy(not_jobcast_server()).start()  # type: ignore[arg-type]
    yield running
    running.stop()


def test_a_server_that_is_not_jobcast_exits_4_with_one_line(
    not_jobcast: Proxy, tmp_path: Path
) -> None:
    env = cli_env(not_jobcast.url, "t", tmp_path)
    commands = (
        ["watch", "abc"],
        ["tail", "a/b"],
        ["jobs"],
        ["submit", "demo"],
        ["publish", "a/b", "t"],
        ["cancel", "abc"],
    )
    for command, result in zip(commands, run_all(env, *commands), strict=True):
        assert result.returncode == 4, command
        assert f"is {not_jobcast.url} a jobcast server?" in one_error_line(result)


# -- once connected, a stream waits for its server ----------------------------------------------


def restartable(data_dir: Path, port: int = 0) -> LiveServer:
    # Short retry hints: the client honours them as a floor, and the test waits for it.
    settings = make_settings(
        data_dir=data_dir, retry_ms=100, drain_retry_min_ms=50, drain_retry_max_ms=200
    )
    return LiveServer(create_app(settings), port=port).start()


def test_an_established_tail_outlives_a_server_restart(tmp_path: Path) -> None:
    first = restartable(tmp_path)
    second: LiveServer | None = None
    token = first.token("svc", "service")
    env = cli_env(first.url, token, tmp_path)
    process: subprocess.Popen[str] | None = None
    try:
        with Client(first.url, token=token) as client:
            seed = client.publish("videos/8", "status", {"n": 0})
            process = start_tail(env, "videos/8", seed)
            lines = lines_of(process)
            before = client.publish("videos/8", "status", {"n": 1})
            assert json.loads(lines.get(timeout=20))["id"] == before
        first.stop()  # the stream ends, then connections are refused for a while
        second = restartable(tmp_path, first.port)
        with Client(second.url, token=token) as client:
            after = client.publish("videos/8", "status", {"n": 2})
        assert json.loads(lines.get(timeout=20))["id"] == after
        assert process.poll() is None
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
            assert process.stdout is not None
            process.stdout.close()
        first.stop()
        if second is not None:
            second.stop()


# -- values, tokens and URLs ----------------------------------------------------------------------


def test_nan_and_infinity_are_text_not_a_traceback(server: LiveServer, tmp_path: Path) -> None:
    env = cli_env(server.url, server.token("svc", "service"), tmp_path)
    values = ["NaN", "Infinity", "-Infinity", "1e999"]
    with Client(server.url, token=server.token("svc", "service")) as client:
        seed = client.publish("videos/5", "status")
        # `--`: else "-Infinity" would be read as an option.
        results = [jobcast(env, "publish", "videos/5", "status", "--", value) for value in values]
        assert [result.returncode for result in results] == [0] * len(values)
        stream = client.subscribe("videos/5", last_event_id=seed)
        events = take(stream, len(values))
        stream.close()
    assert [event.data for event in events if isinstance(event, Event)] == values
    # As a --param it is the text "Infinity", which the demo's `delay` refuses.
    param = jobcast(env, "submit", "demo", "-p", "delay=Infinity")
    assert param.returncode == 4
    assert "delay" in param.stderr and "Traceback" not in param.stderr
    params = jobcast(env, "submit", "demo", "--params", '{"delay": NaN}')
    assert params.returncode == 2
    assert one_error_line(params) == "error: --params must be a JSON object (NaN is not JSON)"


def test_a_malformed_token_or_url_is_a_usage_error(tmp_path: Path) -> None:
    runner = CliRunner()  # refused before any request: no server, no process needed
    env = {"JOBCAST_CONFIG": str(tmp_path / "absent.toml"), "COLUMNS": "200"}
    url = f"http://127.0.0.1:{free_port()}"
    for token in ("tökén", "abc\ndef", "two words"):
        shown = runner.invoke(app, ["jobs", "--url", url, "--token", token], env=env)
        assert shown.exit_code == 2, shown.output
        assert "printable ASCII" in shown.output
        assert "cannot reach" not in shown.output
    for bad in ("http://127.0.0.1:abc", "127.0.0.1:8000"):
        shown = runner.invoke(app, ["jobs", "--url", bad, "--token", "t"], env=env)
        assert shown.exit_code == 2, shown.output
        assert bad in shown.output


# -- smaller things ------------------------------------------------------------------------------


def test_a_forbidden_cancel_is_not_told_about_publishing(
    server: LiveServer, tmp_path: Path
) -> None:
    with Client(server.url, token=server.token("alice")) as alice:
        job = alice.submit("demo", {"steps": 100, "delay": 0.2})
        shared = httpx.put(f"{server.url}/api/jobs/{job.id}/readers/bob", headers=server.auth())
        assert shared.status_code == 200, shared.text
        refused = jobcast(cli_env(server.url, server.token("bob"), tmp_path), "cancel", job.id)
        alice.cancel(job.id)
    assert refused.returncode == 4
    assert "may read job" in refused.stderr
    assert "Publishing" not in refused.stderr


def test_submit_watch_has_a_timeout(server: LiveServer, tmp_path: Path) -> None:
    env = cli_env(server.url, server.token("alice"), tmp_path)
    timed = jobcast(env, "submit", "demo", "-p", "steps=100", "--watch", "--timeout", "0.5")
    assert timed.returncode == 5
    assert "did not finish within --timeout" in timed.stderr
    alone = jobcast(env, "submit", "demo", "--timeout", "1")
    assert alone.returncode == 2
    assert "--timeout applies to --watch" in alone.stderr


def test_watch_into_a_pipe_closed_early_exits_quietly(server: LiveServer, tmp_path: Path) -> None:
    env = cli_env(server.url, server.token("alice"), tmp_path)
    with Client(server.url, token=server.token("alice")) as client:
        job = client.submit("demo", {"steps": 100, "delay": 0.05})
        process = subprocess.Popen(
            [sys.executable, "-m", "jobcast", "watch", job.id, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert process.stdout is not None and process.stderr is not None
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(process.stdout.readline).result(20)
        assert json.loads(first)["type"] == "snapshot"
        process.stdout.close()  # `| head -1`: the reader leaves; progress events keep coming
        returncode = process.wait(20)
        stderr = process.stderr.read()
        process.stderr.close()
        client.cancel(job.id)
    # 141 as for any program stopped by SIGPIPE: not 1, which would say the job failed.
    assert returncode == 141
    assert stderr == ""


# -- settings that do not parse ----------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "worker", "token"])
def test_a_setting_that_does_not_parse_is_one_line_naming_it(command: str, tmp_path: Path) -> None:
    env = {**os.environ, "JOBCAST_DATA_DIR": str(tmp_path), "JOBCAST_RETRY_MS": "soon"}
    env["JOBCAST_BROKER_URL"] = "redis+cluster://127.0.0.1:7000?wait=1&password=hidden"
    args = [command] if command != "token" else [command, "--sub", "alice"]
    result = jobcast(env, *args)
    assert result.returncode == 2
    line = one_error_line(result)
    assert "JOBCAST_RETRY_MS: Input should be a valid integer" in line
    assert "JOBCAST_BROKER_URL: ?wait is not supported on a Redis Cluster URL" in line
    assert "hidden" not in line  # values are never echoed: they may be secrets
