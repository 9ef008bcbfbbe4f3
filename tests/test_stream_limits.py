"""Streams that must end (a host's time limit) end cleanly and resume without loss; readiness."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import connect

from jobcast.client import AsyncClient, Client, Event, ReconnectPolicy
from jobcast.events import EventId
from tests.support import EventStream, LiveServer
from tests.ws_support import receive_until_closed, send


async def test_max_stream_seconds_ends_streams_with_a_retry_hint_and_no_loss(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(max_stream_seconds=0.5, heartbeat_interval=0.1)
    url = f"{server.url}/api/events"
    publish = server.auth("w", "service")
    await client.post(url, json={"topic": "l", "type": "t", "data": 0}, headers=publish)
    first = await client.post(url, json={"topic": "l", "type": "t", "data": 1}, headers=publish)
    async with EventStream(
        client,
        url,
        params={"topic": "l", "last_event_id": first.json()["id"]},
        headers=server.auth(),
    ) as events:
        await client.post(url, json={"topic": "l", "type": "t", "data": 2}, headers=publish)
        frames = await events.until_end(timeout=5)
        assert [f.data for f in frames] == ["2"]  # no reauth: the credential is fine
        assert events.decoder.retry == 3000
        last = events.decoder.last_event_id
    # published while the client was away: the resumed stream delivers it, nothing else
    await client.post(url, json={"topic": "l", "type": "t", "data": 3}, headers=publish)
    async with EventStream(
        client, url, params={"topic": "l", "last_event_id": last}, headers=server.auth()
    ) as events:
        assert (await events.next()).data == "3"


async def test_ready_turns_false_when_draining(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    assert (await client.get(f"{server.url}/ready")).json() == {"ready": True}
    server.run(_drain(server)).result(5)
    response = await client.get(f"{server.url}/ready")
    assert response.status_code == 503 and response.json()["reason"] == "draining"
    assert (await client.get(f"{server.url}/health")).json()["status"] == "draining"


async def _drain(server: LiveServer) -> None:
    server.jc.hub.drain()


# -- JOBCAST_MAX_STREAM_SECONDS: cut streams, clients resume across the cuts ---------------------

LIMIT = 1.0  # seconds; events are published for more than two of them
CUT = {"max_stream_seconds": LIMIT, "heartbeat_interval": 0.2, "retry_ms": 100}
FAST = ReconnectPolicy(initial_delay=0.05, max_delay=0.5, read_timeout=5)


async def publish_paced(
    client: httpx.AsyncClient, server: LiveServer, topic: str, count: int
) -> list[str]:
    """Publish ``count`` events over about 2.5 limits, so that streams are cut in between."""
    ids = []
    for n in range(count):
        response = await client.post(
            f"{server.url}/api/events",
            json={"topic": topic, "type": "tick", "data": n},
            headers=server.auth("worker", "service"),
        )
        ids.append(response.json()["id"])
        await asyncio.sleep(2.5 * LIMIT / count)  # pacing, not synchronisation
    return ids


async def test_a_stream_ends_before_the_limit(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(**CUT)
    started = time.monotonic()
    async with EventStream(
        client, f"{server.url}/api/events", params={"topic": "l"}, headers=server.auth()
    ) as events:
        await events.until_end(timeout=3 * LIMIT)
    # H7: never after the limit (the slack is the request's own round trip), at most a tenth
    # and one tick before it.
    assert 0.85 * LIMIT < time.monotonic() - started < LIMIT + 0.05
    assert events.decoder.retry == 100


async def test_python_clients_resume_across_cuts_without_loss_or_duplicates(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(**CUT)
    token = server.token("watcher", "service")
    seed = (
        await client.post(
            f"{server.url}/api/events",
            json={"topic": "cut", "type": "tick", "data": -1},
            headers=server.auth("worker", "service"),
        )
    ).json()["id"]
    count = 40

    async def consume_async() -> list[Event]:
        got: list[Event] = []
        async with (
            AsyncClient(server.url, token=token, reconnect=FAST) as jc,
            contextlib.aclosing(jc.subscribe("cut", last_event_id=seed)) as items,
        ):
            async for item in items:
                if isinstance(item, Event):
                    got.append(item)
                if len(got) == count:
                    break
        return got

    def consume_sync() -> list[Event]:
        with Client(server.url, token=token, reconnect=FAST) as jc:
            stream = jc.subscribe("cut", last_event_id=seed)
            got = [item for item in itertools.islice(stream, count) if isinstance(item, Event)]
            stream.close()
            return got

    async def watch_job(job_id: str) -> list[Event]:
        async with AsyncClient(server.url, token=server.token(), reconnect=FAST) as jc:
            return [item async for item in jc.watch(job_id) if isinstance(item, Event)]

    job = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": "demo", "params": {"steps": 25, "delay": 0.1}},
        headers=server.auth(),
    )
    async with asyncio.timeout(20):
        consumers = asyncio.gather(
            consume_async(), asyncio.to_thread(consume_sync), watch_job(job.json()["id"])
        )
        ids = await publish_paced(client, server, "cut", count)
        async_events, sync_events, job_events = await consumers
    for events in (async_events, sync_events):
        assert [e.id for e in events] == ids
        assert [e.data for e in events] == list(range(count))
    assert server.jc.hub.stats.replays >= 3 * 2  # every consumer resumed at least twice
    positions = [EventId.parse(e.id or "") for e in job_events if e.type != "snapshot"]
    assert [p.position for p in positions if p] == sorted({p.position for p in positions if p})
    assert [e.type for e in job_events if e.terminal] == ["succeeded"]


async def test_websockets_close_with_1012_at_the_limit_and_resume_without_loss(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(**CUT)
    ws_url = f"ws://{server.host}:{server.port}/ws/events?token={server.token()}"
    seed = (
        await client.post(
            f"{server.url}/api/events",
            json={"topic": "ws", "type": "tick", "data": -1},
            headers=server.auth("worker", "service"),
        )
    ).json()["id"]
    count = 30
    received: list[dict[str, Any]] = []
    codes: list[int | None] = []

    async def consume() -> None:
        last = seed
        while len(received) < count:
            async with connect(ws_url) as ws:
                await send(ws, {"op": "subscribe", "topics": ["ws"], "last_event_id": last})
                for message in await receive_until_closed(ws, timeout=3 * LIMIT):
                    if "id" in message:
                        received.append(message)
                        last = message["id"]
                codes.append(ws.close_code)

    async with asyncio.timeout(20):
        consumer = asyncio.ensure_future(consume())
        ids = await publish_paced(client, server, "ws", count)
        await consumer
    assert [m["id"] for m in received] == ids
    assert codes[0] == 1012 and len(codes) >= 2  # restart-style: reconnect and resume


# -- draining: sockets ------------------------------------------------------------------------


async def test_sockets_are_told_to_reconnect_when_the_server_drains(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    # Heartbeats far apart: only the drain itself can end the idle socket in time.
    server = make_server(heartbeat_interval=30)
    base = f"ws://{server.host}:{server.port}"
    job = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": "demo", "params": {"steps": 100, "delay": 0.1}},
        headers=server.auth(),
    )
    async with connect(f"{base}/ws/events?token={server.token()}") as idle:
        server.run(_drain(server)).result(5)
        await receive_until_closed(idle, timeout=2)
        assert idle.close_code == 1012
    # Opened while draining: refused with the same restart code, to reconnect elsewhere.
    async with connect(f"{base}/ws/events?token={server.token()}") as late:
        await receive_until_closed(late, timeout=2)  # closed before it could subscribe
        assert late.close_code == 1012
    async with connect(f"{base}/ws/jobs/{job.json()['id']}?token={server.token()}") as job_ws:
        await receive_until_closed(job_ws, timeout=2)
        assert job_ws.close_code == 1012
