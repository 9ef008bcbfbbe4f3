"""Jobs' output streams (``ctx.stream``) and ``/v1/stream`` as users meet them: a real server,
real jobs, jobcast's credentials, the PyPI Durable Streams client, restarts and cut-offs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from durable_streams import DurableStream, stream

from jobcast.client import AsyncClient, Client
from jobcast.wire import SSEDecoder
from tests.jobs_support import poll_until_done, submit
from tests.output_handlers import chunk
from tests.support import LiveServer, eventually
from tests.test_cli_client import cli_env

HANDLERS = ["tests.output_handlers"]


@pytest.fixture
def server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(handlers=HANDLERS, public_stream_prefixes=["open/"])


async def opened(client: httpx.AsyncClient, server: LiveServer, job_id: str) -> None:
    """Return once the job opened its output stream (it lists it): before, reads are 404."""

    async def listed() -> bool:
        response = await client.get(f"{server.url}/api/jobs/{job_id}", headers=server.auth())
        return bool(response.json()["streams"])

    await eventually(listed, timeout=10)


async def test_a_job_lists_its_output_and_its_watchers_read_it(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, server, "write_chunks", {"n": 50})
    snapshot = (await poll_until_done(client, server, job["id"]))[-1]
    expected = "".join(chunk(i) for i in range(50))
    assert snapshot["state"] == "succeeded"
    assert snapshot["streams"] == [
        {
            "name": "output",
            "path": f"jobs/{job['id']}/output",
            "content_type": "text/plain",
            "length": len(expected.encode()),
            "closed": True,
        }
    ]
    url = f"{server.url}/v1/stream/jobs/{job['id']}/output"
    read = await client.get(url, headers=server.auth("alice"))
    assert read.status_code == 200
    assert read.text == expected
    assert read.headers["stream-closed"] == "true"
    # Someone else's job is not found; no credential at all is a 401; a ticket for the job
    # opens it.
    assert (await client.get(url, headers=server.auth("bob"))).status_code == 404
    assert (await client.get(url)).status_code == 401
    ticket = await client.post(
        f"{server.url}/api/auth/ticket",
        json={"topics": [f"jobs/{job['id']}"]},
        headers=server.auth("alice"),
    )
    assert (await client.get(url, params={"ticket": ticket.json()["ticket"]})).text == expected
    # A job's output is the job's: nobody appends to it over HTTP without a grant.
    append = await client.post(
        url, content=b"forged", headers={**server.auth("alice"), "Content-Type": "text/plain"}
    )
    assert append.status_code == 403


async def test_json_messages_and_several_streams_per_job(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, server, "write_messages", {"n": 3})
    snapshot = (await poll_until_done(client, server, job["id"]))[-1]
    assert [s["name"] for s in snapshot["streams"]] == ["log", "messages"]
    base = f"{server.url}/v1/stream/jobs/{job['id']}"
    messages = await client.get(f"{base}/messages", headers=server.auth("alice"))
    assert messages.json() == [{"step": i, "text": f"step {i}"} for i in range(3)] + [[1, 2]]
    log = await client.get(f"{base}/log", headers=server.auth("alice"))
    assert log.text == "step 0\nstep 1\nstep 2\n"


async def test_an_output_past_the_size_limit_raises_in_the_handler(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=HANDLERS, max_stream_bytes=1000)
    job = await submit(client, server, "write_too_much")
    snapshot = (await poll_until_done(client, server, job["id"]))[-1]
    assert snapshot["result"]["written"] == 1000
    assert "the limit is 1000 (JOBCAST_MAX_STREAM_BYTES)" in snapshot["result"]["error"]
    read = await client.get(
        f"{server.url}/v1/stream/jobs/{job['id']}/output", headers=server.auth("alice")
    )
    assert read.text == "x" * 1000  # what came before the refused write stays


async def test_ten_thousand_chunks_read_through_ten_cut_offs_are_byte_identical(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    expected = "".join(chunk(i) for i in range(10_000))
    job = await submit(client, server, "write_chunks", {"n": 10_000, "every": 500, "pause": 0.03})
    url = f"{server.url}/v1/stream/jobs/{job['id']}/output"
    await opened(client, server, job["id"])
    thresholds = [len(expected) * k // 11 for k in range(1, 11)]
    received: list[str] = []
    offset, cuts, connections = "-1", 0, 0
    async with asyncio.timeout(60):
        while True:
            connections += 1
            cut = closed = False
            params = {"offset": offset, "live": "sse"}
            async with client.stream("GET", url, params=params, headers=server.auth()) as r:
                assert r.status_code == 200
                decoder, pending = SSEDecoder(), None
                async for text in r.aiter_text():
                    for event in decoder.feed(text):
                        if event.event == "data":
                            pending = event.data
                            length = sum(map(len, received))
                            if cuts < 10 and length >= thresholds[cuts]:
                                cut = True  # cut off between a data event and its control
                                break
                        elif event.event == "control":
                            control = json.loads(event.data or "{}")
                            received.append(pending or "")
                            pending, offset = None, control["streamNextOffset"]
                            closed = control.get("streamClosed", False)
                    if cut or closed:
                        break
            if closed:
                break
            cuts += cut
    assert cuts == 10 and connections >= 11
    assert "".join(received).encode() == expected.encode()


async def test_the_pypi_client_writes_and_reads_jobcast_streams(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    service = server.auth("svc", "service")

    def use_client() -> tuple[str, list[Any], str]:
        handle = DurableStream.create(
            f"{server.url}/v1/stream/notes/today",
            content_type="application/json",
            headers=service,
        )
        handle.append({"n": 1})
        handle.append({"n": 2})
        with handle.stream(live=False) as response:
            messages = list(response.iter_json())
        handle.close()
        with stream(f"{server.url}/v1/stream/open/board", live=False) as response:
            text = "".join(response.iter_text())
        job_url = f"{server.url}/v1/stream/jobs/{job['id']}/output"
        reading = stream(job_url, offset="-1", live="long-poll", headers=server.auth("alice"))
        parts: list[str] = []
        with reading as response:  # this client tails forever: stop once it is all there
            for piece in response.iter_text():
                parts.append(piece)
                if sum(map(len, parts)) >= len(expected):
                    break
        return text, messages, "".join(parts)

    board = await client.put(
        f"{server.url}/v1/stream/open/board",
        content=b"pinned",
        headers={"Content-Type": "text/plain"},
    )
    assert board.status_code == 201  # a public prefix needs no credential
    job = await submit(client, server, "write_chunks", {"n": 2000, "every": 200, "pause": 0.02})
    await opened(client, server, job["id"])
    expected = "".join(chunk(i) for i in range(2000))
    text, messages, output = await asyncio.wait_for(asyncio.to_thread(use_client), 30)
    assert text == "pinned"
    assert messages == [{"n": 1}, {"n": 2}]
    assert output == expected
    # Without a publish grant on the path, writing is refused; with one, it is not.
    refused = await client.put(f"{server.url}/v1/stream/notes/other", headers=server.auth("bob"))
    assert refused.status_code == 403
    granted = server.auth("bob", topics=["notes/bob/*"])
    allowed = await client.put(f"{server.url}/v1/stream/notes/bob/1", headers=granted)
    assert allowed.status_code == 201


async def test_offsets_survive_a_restart_and_an_old_incarnation_is_gone(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    first = make_server(public_stream_prefixes=["open/"])
    url = f"{first.url}/v1/stream/open/log"
    text = {"Content-Type": "text/plain"}
    assert (await client.put(url, content=b"before ", headers=text)).status_code == 201
    offset = (await client.get(url)).headers["stream-next-offset"]
    first.stop()
    second = make_server(public_stream_prefixes=["open/"])
    url = f"{second.url}/v1/stream/open/log"
    assert (await client.post(url, content=b"after", headers=text)).status_code == 204
    resumed = await client.get(url, params={"offset": offset})
    assert resumed.text == "after"
    # Deleted and made again: an offset of the old stream names removed data (410).
    assert (await client.delete(url)).status_code == 204
    assert (await client.put(url, content=b"new", headers=text)).status_code == 201
    gone = await client.get(url, params={"offset": offset})
    assert gone.status_code == 410
    assert gone.json()["error"] == "gone"
    assert (tmp_path / "streams.db").exists()


async def test_the_client_reads_output_live_sync_and_async_and_resumes_at_an_offset(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    expected = "".join(chunk(i) for i in range(3000))
    job = await submit(client, server, "write_chunks", {"n": 3000, "every": 300, "pause": 0.02})

    def read_sync() -> tuple[str, str]:
        with Client(server.url, token=server.token()) as jobcast:
            reading = jobcast.read_stream(job["id"])  # before the job opened it: it waits
            return "".join(reading), reading.offset

    async def read_async() -> str:
        async with AsyncClient(server.url, token=server.token()) as jobcast:
            return "".join([piece async for piece in jobcast.read_stream(job["id"])])

    async with asyncio.timeout(30):
        (text, end), async_text = await asyncio.gather(asyncio.to_thread(read_sync), read_async())
    assert text == expected and async_text == expected
    # A later reader resumes at an offset another one saved, and stops at the tail.
    with Client(server.url, token=server.token()) as jobcast:
        middle = jobcast.read_stream(job["id"], live=False)
        first = next(iter(middle))
        rest = "".join(jobcast.read_stream(job["id"], offset=middle.offset, live=False))
        assert first + rest == expected
        assert list(jobcast.read_stream(job["id"], offset=end)) == []
        messages = await submit(client, server, "write_messages", {"n": 2})
        await poll_until_done(client, server, messages["id"])
        read = list(jobcast.read_stream(messages["id"], "messages"))
        assert read == [{"step": 0, "text": "step 0"}, {"step": 1, "text": "step 1"}, [1, 2]]


def test_jobcast_watch_prints_a_job_s_output_stream(server: LiveServer, tmp_path: Path) -> None:
    with Client(server.url, token=server.token()) as jobcast:
        job = jobcast.submit("write_chunks", {"n": 500, "every": 100, "pause": 0.02})
    env = cli_env(server.url, server.token(), tmp_path)
    shown = subprocess.run(
        [sys.executable, "-m", "jobcast", "watch", job.id, "--stream", "output"],
        capture_output=True,
        timeout=30,
        env=env,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.decode() == "".join(chunk(i) for i in range(500))


async def test_live_reads_are_bounded_per_subject_like_event_streams(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(public_stream_prefixes=["open/"], max_streams_per_subject=1)
    url = f"{server.url}/v1/stream/open/feed"
    assert (await client.put(url, headers={"Content-Type": "text/plain"})).status_code == 201
    live = {"offset": "-1", "live": "sse"}
    async with client.stream("GET", url, params=live, headers=server.auth()) as first:
        assert first.status_code == 200
        second = await client.get(url, params=live, headers=server.auth())
        assert second.status_code == 429
        assert second.json()["error"] == "rate_limited"
        other = await client.get(url, params={"offset": "-1"}, headers=server.auth("bob"))
        assert other.status_code == 200  # catch-up reads hold nothing

    # The slot is given back once the server sees the stream end (the client's close reaches
    # it a moment later): a new live read is let in.
    async def reopened() -> bool:
        request = client.build_request("GET", url, params=live, headers=server.auth())
        response = await client.send(request, stream=True)
        try:
            return response.status_code == 200
        finally:
            await response.aclose()

    assert await eventually(reopened, timeout=5)
