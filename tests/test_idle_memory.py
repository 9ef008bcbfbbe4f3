"""What an idle open stream holds under ``jobcast serve`` (native.N6, subscription.S5,
sse.E6, writer.C6): only what it uses, and a connection that serves on once it ends."""

from __future__ import annotations

import asyncio
import gc
from collections import deque
from typing import Any

import httpx
from uvicorn.protocols.http.flow_control import FlowControl

from jobcast.server.serving.native import ConnectionSink, StreamFlow
from jobcast.server.streams.sse import EventStreamResponse
from jobcast.server.streams.writer import StreamWriter
from jobcast.subscription import Subscription
from tests.jobs_support import submit
from tests.support import LiveServer, closed, wait_until
from tests.test_native_streams import read_until


def carried_sinks() -> list[ConnectionSink]:
    # type(), not isinstance(): see test_native_streams.test_streams_that_end_leave_nothing_behind
    return [o for o in gc.get_objects() if type(o) is ConnectionSink]


def stream_request(server: LiveServer, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token()}\r\n\r\n"
    ).encode()


async def test_an_idle_carried_stream_keeps_only_what_it_uses(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(stream_request(server, "/api/events?topic=idle"))
        await read_until(reader, b"retry: ")
        await wait_until(lambda: len(carried_sinks()) == 1)
        [sink] = carried_sinks()
        protocol: Any = sink.protocol
        # the request is over: no parser, request, scope, headers, pipeline, event or addresses
        assert protocol.parser is None
        assert protocol.cycle is None and protocol.scope is None and protocol.headers is None
        assert not isinstance(protocol.pipeline, deque)
        assert type(protocol.flow) is StreamFlow
        assert protocol.client is None and protocol.server is None
        stream = protocol.stream
        assert type(stream) is StreamWriter
        response = stream.framing
        assert type(response) is EventStreamResponse
        assert response.raw_headers == [] and response.replay is None
        subscription = stream.source
        assert type(subscription) is Subscription
        assert subscription._allowed is None and subscription._conflatable is None
        await wait_until(lambda: subscription._waiter is not None)  # after the opening's write
        waiter: Any = subscription._waiter
        assert [callback for callback, _ in waiter._callbacks] == [stream]  # no bound method

        published = await client.post(
            f"{server.url}/api/events",
            json={"topic": "idle", "type": "progress", "data": 3},
            headers=server.auth("w", "service"),
        )
        assert published.status_code == 202
        await read_until(reader, b"data: 3")
        server.call(server.jc.hub.drain)  # the stream ends; the connection serves on
        await read_until(reader, b"\r\n0\r\n\r\n")
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_until(reader, b'"status":"draining"')  # answered: the state is made again
        assert type(protocol.flow) is FlowControl and isinstance(protocol.pipeline, deque)
        assert protocol.parser is not None
        assert protocol.client is not None and protocol.server is not None
    finally:
        await closed(writer)


async def test_a_stream_sent_with_the_start_of_a_next_request_serves_both(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    """The parser had begun the next request: that stream is not carried (it would lose the
    parser's state with it) but served as ASGI, and the next request after it."""
    job = await submit(client, server, "demo", {"steps": 5, "delay": 0.2})  # about a second
    next_request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(stream_request(server, f"/api/jobs/{job['id']}/events") + next_request[:12])
        data = await read_until(reader, b"event: snapshot")
        writer.write(next_request[12:])
        data += await read_until(reader, b'"status":"ok"')
    finally:
        await closed(writer)
    stream, _, after = data.partition(b"\r\n0\r\n\r\n")
    assert b"event: succeeded" in stream
    assert after.startswith(b"HTTP/1.1 200 OK\r\n")
