"""Reading output streams over a WebSocket (``/ws/stream/{path}?offset=``), resuming by offset,
on a real server with real jobs and jobcast's credentials."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets

from tests.jobs_support import submit
from tests.output_handlers import chunk
from tests.support import LiveServer
from tests.test_output_streams import HANDLERS, opened


@pytest.fixture
def server(make_server: Callable[..., LiveServer]) -> LiveServer:
    # A socket without a credential is refused once it sent none for ws_auth_timeout.
    return make_server(handlers=HANDLERS, public_stream_prefixes=["open/"], ws_auth_timeout=1)


def socket_url(server: LiveServer, path: str, **query: str) -> str:
    base = server.url.replace("http", "ws", 1)
    return str(httpx.URL(f"{base}/ws/stream/{path}", params=query))


async def next_message(ws: websockets.ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return message


async def test_a_reader_cut_off_three_times_resumes_at_its_offset_and_gets_every_byte(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, server, "write_chunks", {"n": 3000, "every": 100, "pause": 0.01})
    await opened(client, server, job["id"])
    path, offset, text, cuts = f"jobs/{job['id']}/output", "-1", "", 0
    async with asyncio.timeout(60):
        while True:
            url = socket_url(server, path, offset=offset, token=server.token())
            async with websockets.connect(url) as ws:
                message = await next_message(ws)
                while message["op"] in ("data", "ping"):
                    if message["op"] == "data":
                        text += message.get("data", "")
                        offset = message["offset"]
                        if cuts < 3 and text:  # leave mid-stream, keeping the offset
                            cuts += 1
                            break
                    message = await next_message(ws)
                else:
                    assert message == {"op": "closed", "offset": offset}
                    with pytest.raises(websockets.ConnectionClosedOK):
                        await ws.recv()
                    assert ws.close_code == 1000
                    break
    assert cuts == 3
    assert text == "".join(chunk(i) for i in range(3000))


async def test_json_streams_arrive_as_lists_of_messages(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, server, "write_messages", {"n": 3})
    await opened(client, server, job["id"])
    url = socket_url(server, f"jobs/{job['id']}/messages", offset="-1", token=server.token())
    received: list[Any] = []
    async with asyncio.timeout(20), websockets.connect(url) as ws:
        while (message := await next_message(ws))["op"] != "closed":
            received += message.get("data", [])
    assert received == [{"step": i, "text": f"step {i}"} for i in range(3)] + [[1, 2]]


async def test_a_live_reader_gets_appends_as_they_come_and_pings_while_quiet(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(public_stream_prefixes=["open/"], heartbeat_interval=0.2)
    url = f"{server.url}/v1/stream/open/feed"
    assert (await client.put(url, headers={"Content-Type": "text/plain"})).status_code == 201
    async with asyncio.timeout(20), websockets.connect(socket_url(server, "open/feed")) as ws:
        first = await next_message(ws)
        assert first["op"] == "data" and first["up_to_date"] and "data" not in first
        assert (await next_message(ws))["op"] == "ping"  # nothing written yet
        await client.post(url, content=b"hello", headers={"Content-Type": "text/plain"})
        while (message := await next_message(ws))["op"] == "ping":
            pass
        assert (message["data"], message["up_to_date"]) == ("hello", True)
        assert message["offset"] != first["offset"]


@pytest.mark.parametrize(
    ("path", "query", "sub", "code"),
    [
        ("jobs/{job}/output", {}, "mallory", 4404),  # another's job: not found, as over HTTP
        ("open/missing", {}, None, 4404),
        ("open/feed", {"offset": "nonsense"}, None, 4400),
        ("private/feed", {}, None, 4401),
    ],
    ids=["not-the-owner", "no-stream", "bad-offset", "no-credential"],
)
async def test_refused_reads_say_why_and_close_with_the_status_code(
    server: LiveServer,
    client: httpx.AsyncClient,
    path: str,
    query: dict[str, str],
    sub: str | None,
    code: int,
) -> None:
    job = await submit(client, server, "write_chunks", {"n": 1})
    await opened(client, server, job["id"])
    feed = f"{server.url}/v1/stream/open/feed"
    await client.put(feed, headers={"Content-Type": "text/plain"})
    if sub is not None:
        query = {**query, "token": server.token(sub)}
    url = socket_url(server, path.format(job=job["id"]), **query)
    async with asyncio.timeout(20), websockets.connect(url) as ws:
        assert (await next_message(ws))["op"] == "error"
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == code
