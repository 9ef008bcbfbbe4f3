"""Open streams carried by the connection itself (``server/serving/native.py``), on a real uvicorn
with ``StreamProtocol`` as ``jobcast serve`` runs it."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest

from jobcast.server.serving.native import ConnectionSink
from tests.jobs_support import submit
from tests.support import EventStream, LiveServer, closed, wait_until


def server_tasks(server: LiveServer) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks())

    assert server._loop is not None
    return asyncio.run_coroutine_threadsafe(count(), server._loop).result(5)


async def read_until(reader: asyncio.StreamReader, marker: bytes, timeout: float = 5) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while marker not in data:
            more = await reader.read(65536)
            assert more, f"the connection closed before {marker!r}; got {data!r}"
            data += more
    return data


@asynccontextmanager
async def open_streams(
    client: httpx.AsyncClient, server: LiveServer, topic: str, count: int
) -> AsyncIterator[list[EventStream]]:
    url = f"{server.url}/api/events"
    streams = [
        EventStream(client, url, params={"topic": topic}, headers=server.auth())
        for _ in range(count)
    ]
    async with AsyncExitStack() as stack:
        for stream in streams:
            await stack.enter_async_context(stream)
        await wait_until(lambda: server.jc.hub.subscriber_count == count)
        yield streams


@pytest.mark.parametrize("native_streams", [True, False], ids=["native", "asgi"])
async def test_open_streams_hold_no_task_each(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient, native_streams: bool
) -> None:
    server = make_server(native_streams=native_streams)
    idle = server_tasks(server)
    async with open_streams(client, server, "t", 10) as streams:
        # Through ASGI each stream keeps its request task and its disconnect watch; carried,
        # none (the task that opened it ends right after subscribing).
        expected = 0 if native_streams else 20
        await wait_until(lambda: server_tasks(server) - idle == expected)
        assert server_tasks(server) - idle == expected
        response = await client.post(
            f"{server.url}/api/events",
            json={"topic": "t", "type": "hello", "data": 1},
            headers=server.auth("w", "service"),
        )
        assert response.status_code == 202
        for stream in streams:
            assert (await stream.next(timeout=5)).data == "1"
    await wait_until(lambda: server.jc.hub.subscriber_count == 0)


@pytest.mark.parametrize("sent", ["with-the-stream", "while-it-streams"])
async def test_a_stream_that_ends_leaves_its_connection_to_a_pipelined_request(
    server: LiveServer, client: httpx.AsyncClient, sent: str
) -> None:
    job = await submit(client, server, "demo", {"steps": 5, "delay": 0.2})  # about a second
    stream_request = (
        f"GET /api/jobs/{job['id']}/events HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {server.token()}\r\n\r\n"
    ).encode()
    next_request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        if sent == "with-the-stream":  # one packet: uvicorn queues the second request
            writer.write(stream_request + next_request)
            data = await read_until(reader, b'"status":"ok"')
        else:  # the connection holds it until the stream's end
            writer.write(stream_request)
            data = await read_until(reader, b"event: snapshot")
            writer.write(next_request)
            data += await read_until(reader, b'"status":"ok"')
    finally:
        await closed(writer)
    stream, _, after = data.partition(b"\r\n0\r\n\r\n")  # the stream's last chunk
    assert stream.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked\r\n" in stream
    assert b"event: snapshot" in stream and b"event: succeeded" in stream
    assert after.startswith(b"HTTP/1.1 200 OK\r\n")  # the same connection answered next


async def test_a_client_that_goes_away_is_unsubscribed_at_once(server: LiveServer) -> None:
    hub = server.jc.hub
    with socket.create_connection((server.host, server.port)) as sock:
        auth = f"Authorization: Bearer {server.token()}\r\n"
        sock.sendall(f"GET /api/events?topic=gone HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        await wait_until(lambda: hub.subscriber_count == 1)
    await wait_until(lambda: hub.subscriber_count == 0, timeout=2)  # not at the next heartbeat


async def test_draining_ends_a_carried_stream_with_its_retry_hint(server: LiveServer) -> None:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            f"GET /api/events?topic=d HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {server.token()}\r\n\r\n".encode()
        )
        opening = await read_until(reader, b"retry: ")
        server.call(server.jc.hub.drain)
        data = opening + await read_until(reader, b"\r\n0\r\n\r\n")
    finally:
        await closed(writer)
    low, high = server.jc.hub.options.drain_retry_ms
    hints = [int(line[7:]) for line in data.split(b"\n") if line.startswith(b"retry: ")]
    assert hints[0] == server.jc.settings.retry_ms  # the opening's
    assert low <= hints[-1] <= high  # a spread-out reconnect, then the response's last chunk


async def test_streams_that_end_leave_nothing_behind(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    def carried() -> int:
        # type(), not isinstance(): isinstance reads __class__ through any weakref.proxy in
        # the heap (queue libraries loaded by other tests keep some), and a dead one raises.
        return sum(type(o) is ConnectionSink for o in gc.get_objects())

    hub = server.jc.hub
    for _ in range(3):
        async with open_streams(client, server, "x", 20):
            await wait_until(lambda: carried() == 20)
        await wait_until(lambda: hub.subscriber_count == 0)
    gc.collect()
    assert carried() == 0
    assert server._server is not None
    await wait_until(lambda: len(server._server.server_state.connections) <= 1)  # keep-alives


async def test_a_publish_answered_by_the_connection_keeps_http_semantics(
    server: LiveServer,
) -> None:
    body = b'{"topic":"p","type":"t","data":1}'
    request = (
        f"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nAuthorization: Bearer {server.token('w', 'service')}\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        for last in (False, True):  # two on one connection; the second asks to close it
            writer.write(request + (b"Connection: close\r\n" if last else b"") + b"\r\n" + body)
            head, _, rest = (await read_until(reader, b"\r\n\r\n")).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 202 Accepted\r\n")
            assert b"\r\nx-request-id: " in head
            assert (b"\r\nconnection: close" in head) is last
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            answer = rest + await reader.readexactly(length - len(rest))
            assert answer.startswith(b'{"id":"')
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed after the answer it asked to be last
    finally:
        await closed(writer)


async def test_a_stream_request_whose_body_arrives_late_is_served_as_asgi(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            f"GET /api/events?topic=b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            f"Authorization: Bearer {server.token()}\r\n\r\n".encode()
        )
        await read_until(reader, b"retry: ")
        writer.write(b"hello")  # the rest of that request: not a request of its own
        await wait_until(lambda: server.jc.hub.subscriber_count == 1)
        response = await client.post(
            f"{server.url}/api/events",
            json={"topic": "b", "type": "t", "data": 7},
            headers=server.auth("w", "service"),
        )
        assert response.status_code == 202
        assert b"data: 7" in await read_until(reader, b"data: 7")
        server.call(server.jc.hub.drain)  # the stream ends; the connection serves on
        await read_until(reader, b"\r\n0\r\n\r\n")
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        health = await read_until(reader, b'"status":"draining"')
        assert health.startswith(b"HTTP/1.1 200 OK")
    finally:
        await closed(writer)
