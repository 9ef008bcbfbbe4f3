"""Many jobs at once, each with its own watcher: every terminal event is delivered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pytest

from jobcast.wire import SSEDecoder
from tests.support import LiveServer, closed

JOBS = 1000


def dechunk(body: bytes) -> bytes:
    """Undo HTTP/1.1 chunked transfer encoding."""
    out = bytearray()
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += body[:size]
        body = body[size + 2 :]
    return bytes(out)


async def request(server: LiveServer, head: str, body: bytes = b"") -> tuple[bytes, bytes]:
    """One HTTP/1.1 request on its own raw connection, written in one go.

    Raw sockets keep the client side cheap enough to drive a thousand jobs and streams at
    once from the test process, and a single write avoids Nagle/delayed-ACK stalls.
    """
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
        response_head = await reader.readuntil(b"\r\n\r\n")
        response_body = await reader.read()  # until the server closes (a stream: its end)
    finally:
        await closed(writer)
    if b"transfer-encoding: chunked" in response_head.lower():
        response_body = dechunk(response_body)
    return response_head, response_body


async def submit_and_watch(server: LiveServer, token: str, gate: asyncio.Semaphore) -> list[str]:
    auth = f"Authorization: Bearer {token}\r\n"
    body = orjson.dumps({"kind": "demo", "params": {"steps": 3, "delay": 0.05}})
    async with gate:
        head, answer = await request(
            server,
            f"POST /api/jobs HTTP/1.1\r\nHost: test\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n",
            body,
        )
    assert head.startswith(b"HTTP/1.1 202"), head + answer
    job_id = orjson.loads(answer)["id"]
    head, stream = await request(
        server, f"GET /api/jobs/{job_id}/events HTTP/1.1\r\nHost: test\r\n{auth}"
    )
    assert head.startswith(b"HTTP/1.1 200"), head
    return [event.event or "" for event in SSEDecoder().feed(stream.decode())]


@pytest.mark.timeout(120)  # above the asyncio.timeout(90) inside: that one reports
async def test_a_thousand_concurrent_jobs_each_watched_to_the_end(
    make_server: Callable[..., LiveServer],
) -> None:
    server = make_server(
        job_concurrency=200,
        heartbeat_interval=5,
        max_streams_per_subject=2000,
        rate_limit_submit="5000/minute",
    )
    token = server.token()
    gate = asyncio.Semaphore(200)  # submissions in flight; the watchers all stay open
    async with asyncio.timeout(90):
        streams = await asyncio.gather(
            *(submit_and_watch(server, token, gate) for _ in range(JOBS))
        )
    assert len(streams) == JOBS
    assert all(types[0] == "snapshot" for types in streams)
    assert [types[-1] for types in streams] == ["succeeded"] * JOBS
