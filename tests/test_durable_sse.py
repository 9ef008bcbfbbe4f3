"""``GET /v1/stream/{path}?live=sse`` on the one stream writer (``streams/durable_sse.py``):
carried by the connection under ``jobcast serve`` and as ASGI elsewhere, on a real server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from tests.support import LiveServer, closed, eventually
from tests.test_native_streams import read_until

CARRIERS = pytest.mark.parametrize("native_streams", [True, False], ids=["native", "asgi"])


def sse_request(path: str, offset: str = "-1") -> bytes:
    return f"GET /v1/stream/{path}?offset={offset}&live=sse HTTP/1.1\r\nHost: x\r\n\r\n".encode()


@CARRIERS
async def test_an_sse_read_ends_on_time_and_leaves_its_connection_to_the_next_request(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient, native_streams: bool
) -> None:
    server = make_server(
        native_streams=native_streams,
        public_stream_prefixes=["open/"],
        stream_sse_seconds=1.0,
        heartbeat_interval=0.3,
        max_streams_per_subject=1,
    )
    url = f"{server.url}/v1/stream/open/timed"
    assert (await client.put(url, headers={"Content-Type": "text/plain"})).status_code == 201
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(sse_request("open/timed"))
        data = await read_until(reader, b"event: control")
        appended = await client.post(url, content=b"hello", headers={"Content-Type": "text/plain"})
        assert appended.status_code == 204
        data += await read_until(reader, b"\r\n0\r\n\r\n", timeout=10)  # R3: the stream's end
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        after = await read_until(reader, b'"status":"ok"')
    finally:
        await closed(writer)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"event: data\ndata:hello\n\n" in data
    assert b": ping\n\n" in data  # quiet for longer than the heartbeat interval
    assert data.count(b"\r\n0\r\n\r\n") == 1  # one end, not two
    assert after.startswith(b"HTTP/1.1 200 OK\r\n")  # the same connection answered next

    async def let_in() -> bool:  # its live-read slot is given back (one per subject here)
        request = client.build_request("GET", url, params={"offset": "now", "live": "sse"})
        response = await client.send(request, stream=True)
        try:
            return response.status_code == 200
        finally:
            await response.aclose()

    assert await eventually(let_in, timeout=5)


@CARRIERS
async def test_appends_while_the_reader_is_busy_arrive_whole_and_in_order(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient, native_streams: bool
) -> None:
    server = make_server(native_streams=native_streams, public_stream_prefixes=["open/"])
    url = f"{server.url}/v1/stream/open/many"
    assert (await client.put(url, headers={"Content-Type": "text/plain"})).status_code == 201
    parts = [f"part {i};" for i in range(200)]
    received, closed_seen = "", False
    async with asyncio.timeout(30):
        live = {"offset": "-1", "live": "sse"}
        async with client.stream("GET", url, params=live) as response:
            assert response.status_code == 200

            async def append_all() -> None:
                async with httpx.AsyncClient(timeout=10) as writer:
                    for part in parts:
                        answer = await writer.post(
                            url, content=part, headers={"Content-Type": "text/plain"}
                        )
                        assert answer.status_code == 204
                    done = await writer.post(url, headers={"Stream-Closed": "true"})
                    assert done.status_code == 204

            appending = asyncio.create_task(append_all())
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "data":
                    received += line[5:]
                elif line.startswith("data:") and event == "control":
                    closed_seen = bool(json.loads(line[5:]).get("streamClosed"))
            await appending
    assert received == "".join(parts)
    assert closed_seen


async def test_appends_during_a_reader_s_store_reads_arrive_once_each_and_in_order(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    """A reader catching up on many reads' worth reads the store while appends come in:
    what they carry is taken after each read (D1), none lost, none twice."""
    server = make_server(public_stream_prefixes=["open/"])
    url = f"{server.url}/v1/stream/open/behind"
    headers = {"Content-Type": "text/plain"}
    assert (await client.put(url, headers=headers)).status_code == 201
    backlog = [("x" * 99 + "\n") * 4000 for _ in range(12)]  # 400 KB each: reads cut it
    for block in backlog:
        assert (await client.post(url, content=block, headers=headers)).status_code == 204
    parts = [f"part {i};" for i in range(300)]
    received: list[str] = []

    async def append_all() -> None:
        async with httpx.AsyncClient(timeout=10) as writer:
            for part in parts:
                answer = await writer.post(url, content=part, headers=headers)
                assert answer.status_code == 204
            done = await writer.post(url, headers={"Stream-Closed": "true"})
            assert done.status_code == 204

    async with asyncio.timeout(30):
        appending = asyncio.create_task(append_all())  # while the reader reads the backlog
        live = {"offset": "-1", "live": "sse"}
        async with client.stream("GET", url, params=live) as response:
            assert response.status_code == 200
            event, lines = "", []
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event, lines = line[6:].strip(), []
                elif line.startswith("data:") and event == "data":
                    lines.append(line[5:])
                elif not line and event == "data":
                    received.append("\n".join(lines))  # a data event's lines are one text
                    event = ""
        await appending
    assert "".join(received) == "".join(backlog) + "".join(parts)


@CARRIERS
async def test_a_reader_that_stops_reading_is_let_go_and_its_slot_given_back(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient, native_streams: bool
) -> None:
    server = make_server(
        native_streams=native_streams,
        public_stream_prefixes=["open/"],
        send_timeout=0.5,
        heartbeat_interval=0.2,
        max_streams_per_subject=1,
        max_body_bytes=1 << 20,
    )
    url = f"{server.url}/v1/stream/open/flood"
    assert (await client.put(url, headers={"Content-Type": "text/plain"})).status_code == 201
    reader, writer = await asyncio.open_connection(server.host, server.port, limit=1 << 20)
    try:
        writer.write(sse_request("open/flood"))
        await read_until(reader, b"event: control")
        # The reader stops reading; the server's writes back up until its transport pauses.
        transport = writer.transport
        transport.pause_reading()
        body = b"x" * (512 * 1024)
        for _ in range(40):  # 20 MB: far more than the socket buffers hold
            answer = await client.post(url, content=body, headers={"Content-Type": "text/plain"})
            assert answer.status_code == 204

        async def let_in() -> bool:  # the stuck read ended (writer.C3), its slot is free
            request = client.build_request("GET", url, params={"offset": "now", "live": "sse"})
            response = await client.send(request, stream=True)
            try:
                return response.status_code == 200
            finally:
                await response.aclose()

        assert await eventually(let_in, timeout=10)
        transport.resume_reading()
        async with asyncio.timeout(10):  # what it had buffered, then the server's close
            while await reader.read(1 << 20):
                pass
    finally:
        await closed(writer)
