"""Each example starts with the command its README gives, ``uvicorn examples.<name>.app:app``,
from the repository root, on the embedded default, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import orjson
import pytest

from tests.examples.conftest import free_port
from tests.support import SECRET, EventStream

ROOT = Path(__file__).parents[2]
Check = Callable[[httpx.AsyncClient, str], Awaitable[None]]


@contextlib.asynccontextmanager
async def uvicorn(name: str, port: int, env: dict[str, str]) -> AsyncIterator[str]:
    """``uvicorn examples.<name>.app:app --port <port>``, until startup completes."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        f"examples.{name}.app:app",
        "--port",
        str(port),
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log: list[bytes] = []
    drain: asyncio.Task[bytes] | None = None
    try:
        async with asyncio.timeout(20):  # uvicorn says so once it listens
            while b"Uvicorn running on" not in (line := await process.stderr.readline()):
                log.append(line)
                if not line:
                    raise AssertionError(b"".join(log).decode())
        drain = asyncio.create_task(process.stderr.read())  # keep the pipe from filling up
        yield f"http://127.0.0.1:{port}"
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            code = await process.wait()
            output = await drain
        # uvicorn re-raises the signal once its graceful shutdown is complete.
        assert code in (0, -signal.SIGTERM) and b"Application shutdown complete" in output, (
            output.decode()
        )
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if drain is not None and not drain.done():
            await drain  # ends with the process's stderr


async def sermons(client: httpx.AsyncClient, url: str) -> None:
    async with EventStream(client, f"{url}/api/v2/events/stream") as stream:  # curl -N
        beat = await stream.next()
    assert beat.event == "heartbeat"
    health = (await client.get(f"{url}/api/v2/events/health")).json()
    assert health["service"] == "sse_events"


async def therapy(client: httpx.AsyncClient, url: str) -> None:
    response = await client.get(f"{url}/api/sessions/any/status/stream")
    assert response.status_code == 401


async def ingest(client: httpx.AsyncClient, url: str) -> None:
    assert "react" in (await client.get(f"{url}/")).text


async def workitems(client: httpx.AsyncClient, url: str) -> None:
    async with EventStream(client, f"{url}/sse/workitems") as stream:
        connected = await stream.next()
    assert connected.data is not None and orjson.loads(connected.data)["event"] == "connected"


@pytest.mark.parametrize("check", [sermons, therapy, ingest, workitems], ids=lambda c: c.__name__)
async def test_the_readme_command_starts_the_example(
    check: Check, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    port = free_port()
    env = {
        "JOBCAST_DATA_DIR": str(tmp_path),
        "JOBCAST_JWT_SECRET": SECRET,
        "SSE_HEARTBEAT_INTERVAL": "0.2",
        "SERMONS_INTERNAL_URL": f"http://127.0.0.1:{port}",
    }
    async with uvicorn(check.__name__, port, env) as url:
        await check(client, url)
