"""Graceful drain of a real ``jobcast serve`` process on SIGTERM.

Readiness turns false first; open streams end at once with retry hints drawn from a window;
new streams are refused while other requests are still served; a publish in flight when the
listener closes is acknowledged and durable; the process exits 0 within the grace period.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from jobcast.auth import TokenAuthority
from tests.support import SECRET, EventStream, closed, eventually, make_settings

DELAY = 1.5  # JOBCAST_SHUTDOWN_DELAY_SECONDS
GRACE = 4.0  # JOBCAST_SHUTDOWN_GRACE_SECONDS
TOKENS = TokenAuthority.from_settings(make_settings())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Served:
    """``jobcast serve`` in a subprocess, on the test's data directory."""

    def __init__(self, data_dir: Path, **env: float | str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBCAST_")}
        environ.update({f"JOBCAST_{k.upper()}": str(v) for k, v in env.items()})
        environ.update(JOBCAST_JWT_SECRET=SECRET, JOBCAST_HEARTBEAT_INTERVAL="0.2")
        self.log = data_dir.parent / f"serve-{self.port}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jobcast", "serve", "--port", str(self.port),
                 "--data-dir", str(data_dir), "--log-level", "warning"],
                env=environ, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"jobcast serve did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = Served(tmp_path / "data", shutdown_delay_seconds=DELAY, shutdown_grace_seconds=GRACE)
    yield server
    server.kill()


def auth(sub: str = "alice", role: str = "user") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS.mint(sub, role=role)}"}


async def start_publish(
    port: int, body: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A publish whose body is still on its way: headers and the first byte only."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: {auth('worker', 'service')['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body[:1])
    await writer.drain()
    return reader, writer


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Wait for a condition seen from outside the process (it has no event to await)."""
    await eventually(predicate, timeout, interval=0.02)


async def test_sigterm_drains_then_exits_within_the_grace_period(
    served: Served, client: httpx.AsyncClient
) -> None:
    streams = [
        EventStream(
            client, f"{served.url}/api/events", params={"topic": "a"}, headers=auth(), comments=True
        )
        for _ in range(8)
    ]
    for stream in streams:
        await stream.__aenter__()
        await stream.next()  # a heartbeat: the stream is live
    body = orjson.dumps({"topic": "inflight", "type": "t", "data": {"n": 1}})
    reader, writer = await start_publish(served.port, body)

    served.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    async def not_ready() -> bool:
        return (await client.get(f"{served.url}/ready")).status_code == 503

    await wait_for(not_ready, timeout=DELAY / 2)  # readiness turns false first
    retries = []
    for stream in streams:
        await stream.until_end(timeout=DELAY / 2)
        retries.append(stream.decoder.retry)
        await stream.__aexit__(None, None, None)
    # Spread hints, so the clients do not all come back to the next instance at once.
    assert all(r is not None and 500 <= r <= 5000 for r in retries), retries
    assert len(set(retries)) > 1, retries
    # Until the delay is over, the instance stops only new streams; the rest is served.
    refused = await client.get(f"{served.url}/api/events", params={"topic": "a"}, headers=auth())
    assert refused.status_code == 503
    health = await client.get(f"{served.url}/health")
    assert health.json()["status"] == "draining"
    assert time.monotonic() - signalled < DELAY

    async def port_closed() -> bool:
        return not listening(served.port)

    await wait_for(port_closed, timeout=GRACE)
    # The publish that was in flight when the listener closed still completes.
    writer.write(body[1:])
    await writer.drain()
    async with asyncio.timeout(GRACE):
        response = await reader.read()
    await closed(writer)
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 202"), response
    acknowledged = orjson.loads(payload)["id"]
    assert await asyncio.to_thread(served.process.wait, GRACE) == 0
    assert time.monotonic() - signalled < GRACE

    # Durable: a new process on the same data directory replays it.
    again = Served(served.log.parent / "data")
    try:
        epoch = acknowledged.split("-")[0]
        async with EventStream(
            client,
            f"{again.url}/api/events",
            params={"topic": "inflight", "last_event_id": f"{epoch}-0"},
            headers=auth(),
        ) as replay:
            event = await replay.next()
        assert event.id == acknowledged and orjson.loads(event.data or "") == {"n": 1}
    finally:
        again.kill()


async def test_a_request_that_never_finishes_does_not_hold_the_exit_past_the_grace(
    tmp_path: Path,
) -> None:
    served = Served(tmp_path / "data", shutdown_delay_seconds=0.2, shutdown_grace_seconds=2.0)
    _, writer = await start_publish(served.port, b'{"topic": "stuck"}')  # never completed
    try:
        served.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert await asyncio.to_thread(served.process.wait, 10) == 0
        # The request is cancelled when the grace, less a reserve for the rest, runs out.
        assert 0.2 + 0.8 < time.monotonic() - signalled < 2.0
    finally:
        await closed(writer)
        served.kill()


async def test_a_sync_handler_that_ignores_cancellation_does_not_hold_the_exit(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    data = tmp_path / "data"
    served = Served(data, shutdown_delay_seconds=0.2, shutdown_grace_seconds=2.0,
                    handlers="tests.handlers")  # fmt: skip
    try:
        submitted = await client.post(
            f"{served.url}/api/jobs", json={"kind": "stubborn"}, headers=auth()
        )
        job_id = submitted.json()["id"]

        async def running() -> bool:
            got = await client.get(f"{served.url}/api/jobs/{job_id}", headers=auth())
            return bool(got.json()["state"] == "running")

        await wait_for(running, timeout=10)
        served.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # Its thread would run for a minute more; the process leaves without it.
        assert await asyncio.to_thread(served.process.wait, 10) == 0
        assert time.monotonic() - signalled < 2.0 + 1.0
        assert "job handler thread(s) still running" in served.log.read_text()
    finally:
        served.kill()
    again = Served(data, handlers="tests.handlers")
    try:
        job = (await client.get(f"{again.url}/api/jobs/{job_id}", headers=auth())).json()
        assert job["state"] == "failed" and job["error"]["type"] == "Interrupted", job
    finally:
        again.kill()
