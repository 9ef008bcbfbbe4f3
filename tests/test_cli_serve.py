"""``jobcast serve`` and ``jobcast token`` as a user runs them: real processes, real signals."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import EventStream


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def jobcast(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobcast", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("JOBCAST_")},
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCAST_")}
    env["JOBCAST_HEARTBEAT_INTERVAL"] = "0.5"
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "jobcast", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.close()
            raise RuntimeError(
                f"jobcast serve did not start: {(tmp_path / 'server.log').read_text()}"
            )
        time.sleep(0.05)
    yield process, url, tmp_path
    if process.poll() is None:
        process.kill()
        process.wait(10)
    log.close()


def test_serve_uses_the_embedded_default_in_the_data_directory(
    served: tuple[subprocess.Popen[str], str, Path],
) -> None:
    _, url, cwd = served
    data = cwd / ".jobcast"
    assert (data / "events.db").exists()
    secret = data / "jwt_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    token = jobcast("token", "--sub", "svc", "--role", "service", cwd=cwd).stdout.strip()
    response = httpx.post(
        f"{url}/api/events",
        json={"topic": "a", "type": "t", "data": {}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 202
    user = jobcast("token", "--sub", "alice", cwd=cwd).stdout.strip()
    denied = httpx.post(
        f"{url}/api/events",
        json={"topic": "a", "type": "t"},
        headers={"Authorization": f"Bearer {user}"},
    )
    assert denied.status_code == 403


async def test_sigterm_ends_open_streams_promptly_and_exits_cleanly(
    served: tuple[subprocess.Popen[str], str, Path],
) -> None:
    process, url, cwd = served
    token = jobcast("token", "--sub", "alice", cwd=cwd).stdout.strip()
    async with httpx.AsyncClient(timeout=10) as client:
        streams = [
            EventStream(client, f"{url}/api/events", params={"topic": "a", "token": token})
            for _ in range(3)
        ]
        for stream in streams:
            stream.decoder.keep_comments = True
            await stream.__aenter__()
            await stream.next()  # a heartbeat: the stream is live
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        for stream in streams:
            await stream.until_end(timeout=5)
            assert stream.ended
            # the drain hint is spread over a window so clients do not all return at once
            assert stream.decoder.retry is not None and 500 <= stream.decoder.retry <= 5000
            await stream.__aexit__(None, None, None)
        assert time.monotonic() - started < 3
    assert process.wait(10) == 0


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = jobcast("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "serve" in result.stdout and "token" in result.stdout
