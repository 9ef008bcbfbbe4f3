"""``jobcast serve`` and ``jobcast token`` as a user runs them: real processes, real signals."""

from __future__ import annotations

import asyncio
import contextlib
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
import websockets

from jobcast.auth import TokenAuthority
from tests.scale_support import wait_for_port
from tests.support import SECRET, EventStream
from tests.ws_support import receive_until_closed


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


def serve_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCAST_")}
    env.update({f"JOBCAST_{name.upper()}": value for name, value in settings.items()})
    return env


@contextlib.contextmanager
def serving(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``jobcast serve`` with ``env`` on a free port, stopped on the way out."""
    port = free_port()
    with (tmp_path / "server.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "jobcast", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, process)
            yield process, port
        finally:
            process.terminate()
            process.wait(15)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    with serving(tmp_path, serve_env(heartbeat_interval="0.5")) as (process, port):
        yield process, f"http://127.0.0.1:{port}", tmp_path


def test_serve_uses_the_embedded_default_in_the_data_directory(
    served: tuple[subprocess.Popen[bytes], str, Path],
) -> None:
    _, url, cwd = served
    data = cwd / ".jobcast"
    assert (data / "events.db").exists()
    private = [data / "jwt_secret", *data.glob("*.db*")]  # with SQLite's -wal and -shm files
    assert {p.name for p in private} >= {"jwt_secret", "events.db", "jobs.db"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in private} == dict.fromkeys(
        [p.name for p in private], 0o600
    )
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
    served: tuple[subprocess.Popen[bytes], str, Path],
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


def test_token_says_when_it_made_a_new_secret(tmp_path: Path) -> None:
    # Run away from the server, it used to make a new secret silently: every token refused.
    first = jobcast("token", "--sub", "alice", cwd=tmp_path)
    assert first.returncode == 0 and first.stdout.count(".") == 2  # the token alone on stdout
    assert "a new secret was made" in first.stderr
    again = jobcast("token", "--sub", "alice", cwd=tmp_path)
    assert again.returncode == 0 and again.stderr == ""


def test_serve_prints_the_broker_url_without_its_password(tmp_path: Path) -> None:
    # Nothing listens on that port: the server prints its banner, then fails to start.
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0?password=s3cret"
    result = subprocess.run(
        [sys.executable, "-m", "jobcast", "serve", "--port", str(free_port())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env=serve_env(broker_url=url),
    )
    assert "events: redis://:***@127.0.0.1:" in result.stdout
    assert "s3cret" not in result.stdout + result.stderr


async def test_websocket_messages_far_over_the_limit_are_cut_off_unread(
    served: tuple[subprocess.Popen[bytes], str, Path],
) -> None:
    # The app would read the whole message, answer with an error, then close; uvicorn's own
    # limit (ws_max_size) closes first, without buffering a message that large.
    url = served[1].replace("http://", "ws://") + "/ws/events"
    async with asyncio.timeout(10), websockets.connect(url, max_size=None) as ws:
        # The server stops reading mid-message: the send itself may see the close, or a reset.
        with contextlib.suppress(
            websockets.ConnectionClosed, ConnectionResetError, BrokenPipeError
        ):
            await ws.send("x" * (1024 * 1024))
        assert await receive_until_closed(ws) == []
    assert ws.close_code == 1009, (ws.close_code, ws.close_reason)


@pytest.fixture(params=[False, True], ids=["default", "compression-on"])
def ws_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, bool]]:
    compression: bool = request.param
    env = serve_env(ws_compression="true") if compression else serve_env()
    with serving(tmp_path, env) as (_, port):
        yield port, compression


async def test_websocket_compression_is_off_unless_asked_for(ws_server: tuple[int, bool]) -> None:
    # Every browser offers permessage-deflate; accepting it costs about 40 KB per connection.
    port, compression = ws_server
    url = f"ws://127.0.0.1:{port}/ws/events"
    async with asyncio.timeout(10), websockets.connect(url) as ws:  # offers deflate
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
    assert (extensions is not None) == compression, extensions


def test_forwarded_for_counts_only_from_the_configured_proxies(tmp_path: Path) -> None:
    env = serve_env(jwt_secret=SECRET, rate_limit_publish="1/minute")
    env["JOBCAST_FORWARDED_ALLOW_IPS"] = "10.9.9.9"  # the proxy; the test client is not it
    with serving(tmp_path, env) as (_, port):
        tokens = TokenAuthority(SECRET)
        codes = []
        for n, address in enumerate(["192.0.2.1", "192.0.2.2"]):
            headers = {
                "Authorization": f"Bearer {tokens.mint(f'user{n}', grants=['a'])}",
                "X-Forwarded-For": address,
            }
            response = httpx.post(
                f"http://127.0.0.1:{port}/api/events",
                json={"topic": "a", "type": "t"},
                headers=headers,
            )
            codes.append(response.status_code)
        # two subjects, two claimed addresses, but one real peer: the second is over its limit
        assert codes == [202, 429]
