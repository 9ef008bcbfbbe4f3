"""Streams that must end (a host's time limit) end cleanly and resume without loss; readiness."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.support import EventStream, LiveServer


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
