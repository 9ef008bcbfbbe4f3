"""Malformed resume ids on every streaming route: an in-band ``reset`` (or the job's snapshot),
never a 5xx, and a WebSocket that stays open (regression: ``x-²`` answered 500 and dropped
``/ws/events`` sockets, because ``str.isdigit`` is true of it and ``int`` is not)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from jobcast.events import EventId
from tests.jobs_support import submit
from tests.support import EventStream, LiveServer
from tests.ws_support import receive, send

#: Each is what a client might send back as the last id it saw; none is one of ours.
MALFORMED = [
    "x-\u00b2",  # a superscript two: isdigit() is true, int() refuses it
    "x-\uff11\uff12",  # full-width digits: int() reads them as 12
    "x-\u0663",  # an Arabic-Indic digit
    "-1",
    "a-b-c",
    "x-abc",
    "x-",
    "x-99999999999999999999",  # past 19 digits
    "x-9223372036854775808",  # past a signed 64-bit position
    "x-" + "9" * 5000,  # int() refuses more than 4300 digits
    "x" * 5000 + "-1",
    "x-1\x00",
    "\x00",
]

#: The same ids as a ``Last-Event-ID`` header: raw bytes, decoded by the server as latin-1.
HEADERS = [b"x-\xb2", b"x-\xef\xbc\x91", b"-1", b"a-b-c", b"x-99999999999999999999", b"x-"]


@pytest.fixture
def streams_server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(heartbeat_interval=0.2)


async def first_event(stream: EventStream) -> Any:
    return await stream.next(timeout=5)


async def reply(ws: ClientConnection) -> Any:
    """The next message that is not a heartbeat."""
    async with asyncio.timeout(5):
        while (message := await receive(ws)).get("op") == "ping":
            pass
    return message


@pytest.mark.parametrize("bad", MALFORMED, ids=range(len(MALFORMED)))
def test_the_parser_refuses_them(bad: str) -> None:
    assert EventId.parse(bad) is None


async def test_events_stream_answers_a_reset(
    streams_server: LiveServer, client: httpx.AsyncClient
) -> None:
    headers = streams_server.auth()
    for bad in MALFORMED:
        url = f"{streams_server.url}/api/events?topic=a/1&last_event_id={quote(bad)}"
        async with EventStream(client, url, headers=headers) as stream:
            assert stream.response is not None
            assert stream.response.status_code == 200, bad
            event = await first_event(stream)
            assert event.event == "reset", bad
            assert orjson.loads(event.data)["reason"] == "unknown_id", bad
    for raw in HEADERS:
        async with EventStream(
            client,
            f"{streams_server.url}/api/events?topic=a/1",
            headers={**headers, "Last-Event-ID": raw},  # type: ignore[dict-item]
        ) as stream:
            assert stream.response is not None
            assert stream.response.status_code == 200, raw
            event = await first_event(stream)
            assert event.event == "reset" and orjson.loads(event.data)["reason"] == "unknown_id", (
                raw
            )


async def test_job_stream_answers_the_snapshot(
    streams_server: LiveServer, client: httpx.AsyncClient
) -> None:
    running = await submit(client, streams_server, "demo", {"steps": 100, "delay": 0.5})
    headers = streams_server.auth()
    base = f"{streams_server.url}/api/jobs/{running['id']}/events"
    for bad in MALFORMED:
        async with EventStream(
            client, f"{base}?last_event_id={quote(bad)}", headers=headers
        ) as stream:
            assert stream.response is not None
            assert stream.response.status_code == 200, bad
            assert (await first_event(stream)).event == "snapshot", bad
    for raw in HEADERS:
        async with EventStream(
            client,
            base,
            headers={**headers, "Last-Event-ID": raw},  # type: ignore[dict-item]
        ) as stream:
            assert stream.response is not None
            assert stream.response.status_code == 200, raw
            assert (await first_event(stream)).event == "snapshot", raw


async def test_job_socket_answers_the_snapshot(
    streams_server: LiveServer, client: httpx.AsyncClient
) -> None:
    running = await submit(client, streams_server, "demo", {"steps": 100, "delay": 0.5})
    token = streams_server.token()
    base = f"ws://{streams_server.host}:{streams_server.port}/ws/jobs/{running['id']}"
    for bad in MALFORMED:
        async with connect(f"{base}?token={token}&last_event_id={quote(bad)}") as ws:
            message = await receive(ws)
            assert message["type"] == "snapshot", bad
            assert ws.close_code is None, bad


async def test_events_socket_answers_a_reset_and_stays_open(
    streams_server: LiveServer, client: httpx.AsyncClient
) -> None:
    url = f"ws://{streams_server.host}:{streams_server.port}/ws/events?client_id=c1&token="
    async with connect(url + streams_server.token()) as ws:
        await send(ws, {"op": "subscribe", "topics": ["keep/1"]})
        assert (await reply(ws))["op"] == "subscribed"
        for index, bad in enumerate(MALFORMED):
            topic = f"bad/{index}"
            await send(ws, {"op": "subscribe", "topics": [topic], "last_event_id": bad})
            replies = [await reply(ws), await reply(ws)]
            assert replies[0] == {"op": "subscribed", "topics": [topic]}, bad
            assert replies[1]["op"] == "reset" and replies[1]["reason"] == "unknown_id", bad
            await send(ws, {"op": "unsubscribe", "topics": [topic]})
            assert (await reply(ws))["op"] == "unsubscribed"
            await send(ws, {"op": "ack", "id": bad})
            assert (await reply(ws))["op"] == "error", bad
        # The first subscription survived every refusal.
        published = await client.post(
            f"{streams_server.url}/api/events",
            json={"topic": "keep/1", "type": "t", "data": 1},
            headers=streams_server.auth("worker", "service"),
        )
        assert published.status_code == 202
        assert (await reply(ws))["id"] == published.json()["id"]
