"""``read_stream(..., transport="ws")`` of both clients on a real server: a job's output over
``/ws/stream/...``, the same items as over HTTP, resumed at the byte across the server's cuts,
and refusals as the client's typed errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from jobcast.client import AsyncClient, Client, HTTPStatusError, NotFoundError, ReconnectPolicy
from jobcast.server.app import create_app
from tests.jobs_support import poll_until_done, submit
from tests.output_handlers import chunk
from tests.support import LiveServer, make_settings, wait_until
from tests.test_extras import without
from tests.test_output_streams import HANDLERS

#: Reconnects after a cut come quickly, so that a test with many cuts stays short.
QUICK = ReconnectPolicy(initial_delay=0.05, max_delay=0.5)


@pytest.fixture
def server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(handlers=HANDLERS)


async def test_both_clients_read_a_job_s_output_over_a_socket_as_over_http(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    expected = "".join(chunk(i) for i in range(2000))
    job = await submit(client, server, "write_chunks", {"n": 2000, "every": 200, "pause": 0.02})

    def read_sync() -> tuple[str, str]:
        with Client(server.url, token=server.token()) as jobcast:
            reading = jobcast.read_stream(job["id"], transport="ws")  # before it opened: waits
            return "".join(reading), reading.offset

    async def read_async() -> tuple[str, str]:
        async with AsyncClient(server.url, token=server.token()) as jobcast:
            reading = jobcast.read_stream(job["id"], transport="ws")
            return "".join([piece async for piece in reading]), reading.offset

    async with asyncio.timeout(30):
        (text, end), (async_text, async_end) = await asyncio.gather(
            asyncio.to_thread(read_sync), read_async()
        )
    assert text == expected and async_text == expected
    with Client(server.url, token=server.token()) as jobcast:
        over_http = jobcast.read_stream(job["id"], live=False)
        assert "".join(over_http) == expected
        # Both transports name the same offsets: one's end is where the other resumes.
        assert end == async_end == over_http.offset
        assert list(jobcast.read_stream(job["id"], offset=end, transport="ws")) == []
        middle = jobcast.read_stream(job["id"], live=False, transport="ws")
        first = next(iter(middle))
        middle.close()
        rest = jobcast.read_stream(job["id"], offset=middle.offset, live=False, transport="ws")
        assert first + "".join(rest) == expected
        messages = await submit(client, server, "write_messages", {"n": 2})
        read = list(jobcast.read_stream(messages["id"], "messages", transport="ws"))
        assert read == [{"step": 0, "text": "step 0"}, {"step": 1, "text": "step 1"}, [1, 2]]


@pytest.mark.parametrize("twin", ["async", "sync"])
async def test_a_read_cut_by_the_server_again_and_again_resumes_byte_identical(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient, twin: str
) -> None:
    # The server ends every stream socket after 0.3 s (close 1012, "reconnect with the last
    # offset"); the job writes for about 2 s, so the read outlives several sockets.
    server = make_server(handlers=HANDLERS, max_stream_seconds=0.3, heartbeat_interval=0.1)
    expected = "".join(chunk(i) for i in range(4000))
    job = await submit(client, server, "write_chunks", {"n": 4000, "every": 200, "pause": 0.1})

    def read_sync() -> list[str]:
        with Client(server.url, token=server.token(), reconnect=QUICK) as jobcast:
            return list(jobcast.read_stream(job["id"], transport="ws"))

    async def read_async() -> list[str]:
        async with AsyncClient(server.url, token=server.token(), reconnect=QUICK) as jobcast:
            return [piece async for piece in jobcast.read_stream(job["id"], transport="ws")]

    started = time.monotonic()
    async with asyncio.timeout(40):
        pieces = await (asyncio.to_thread(read_sync) if twin == "sync" else read_async())
    assert "".join(pieces) == expected  # nothing missing, nothing twice
    # At most 0.3 s per socket: a read this long was carried by several of them.
    assert time.monotonic() - started > 1.5
    assert len(pieces) > 5


async def test_a_read_waits_out_a_restart_with_backoff_and_reads_everything(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    first = make_server(handlers=HANDLERS)
    job = await submit(client, first, "write_chunks", {"n": 300})
    await poll_until_done(client, first, job["id"])
    expected = "".join(chunk(i) for i in range(300))
    token, port = first.token(), first.port
    await asyncio.to_thread(first.stop)
    attempts = 0

    def token_source() -> str:  # asked once per connection attempt
        nonlocal attempts
        attempts += 1
        return token

    async def read() -> str:
        async with AsyncClient(first.url, token=token_source, reconnect=QUICK) as jobcast:
            return "".join(
                [piece async for piece in jobcast.read_stream(job["id"], transport="ws")]
            )

    async with asyncio.timeout(30):
        reader = asyncio.create_task(read())
        await wait_until(lambda: attempts >= 3, timeout=10)  # refused, backing off
        assert not reader.done()
        app = create_app(make_settings(data_dir=tmp_path, handlers=HANDLERS))
        second = LiveServer(app, port=port).start()
        try:
            assert await reader == expected
        finally:
            await asyncio.to_thread(second.stop)


async def test_an_unknown_job_or_another_s_job_is_not_found(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, server, "write_chunks", {"n": 10})
    await poll_until_done(client, server, job["id"])
    async with AsyncClient(server.url, token=server.token("bob")) as jobcast, asyncio.timeout(10):
        with pytest.raises(NotFoundError):
            [piece async for piece in jobcast.read_stream(job["id"], transport="ws")]
        with pytest.raises(NotFoundError):
            [piece async for piece in jobcast.read_stream("no-such-job", transport="ws")]
    with Client(server.url, token=server.token()) as jobcast:
        # A job that ended without opening the stream: nothing to read, as over HTTP.
        assert list(jobcast.read_stream(job["id"], "never-opened", transport="ws")) == []
        with pytest.raises(ValueError, match="'http' or 'ws'"):
            jobcast.read_stream(job["id"], transport="sse")  # type: ignore[arg-type]


async def test_an_offset_of_data_no_longer_kept_is_gone_on_both_transports(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    old = await submit(client, server, "write_chunks", {"n": 5})
    new = await submit(client, server, "write_chunks", {"n": 5})
    for job in (old, new):
        await poll_until_done(client, server, job["id"])
    with Client(server.url, token=server.token()) as jobcast:
        reading = jobcast.read_stream(old["id"], live=False)
        "".join(reading)
        stale = reading.offset  # an offset of another stream: not this one's data
        for transport in ("http", "ws"):
            with pytest.raises(HTTPStatusError) as caught:
                list(jobcast.read_stream(new["id"], offset=stale, transport=transport))
            assert (caught.value.status, caught.value.error) == (410, "gone"), transport


def test_websockets_is_loaded_only_by_a_socket_read_and_its_absence_names_the_extra(
    tmp_path: Path,
) -> None:
    def run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env
        )

    loaded = run("import sys, jobcast.client; print('websockets' in sys.modules)")
    assert loaded.stdout.strip() == "False", loaded.stderr
    # Without the library (the base install): the call says which extra to install, before
    # anything is sent; the HTTP read needs nothing more.
    code = (
        "from jobcast.client import Client\n"
        "client = Client('http://127.0.0.1:9')\n"
        "client.read_stream('job', transport='http')\n"
        "try:\n"
        "    client.read_stream('job', transport='ws')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    missing = run(code, without(tmp_path, "websockets"))
    assert missing.returncode == 0, missing.stderr
    assert "pip install 'jobcast[ws]'" in missing.stdout
