"""``/ws/events`` against a real server: subscribe, unsubscribe, ack and resume, abuse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from jobcast.server.streams import event_socket as ws_events
from tests.support import LiveServer
from tests.ws_support import receive, receive_until_closed, send


@pytest.fixture
def ws_server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(heartbeat_interval=0.2, ws_max_messages_per_second=20)


def ws_url(server: LiveServer, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"token": server.token(), **params}.items())
    return f"ws://{server.host}:{server.port}/ws/events?{query}"


async def publish(client: httpx.AsyncClient, server: LiveServer, topic: str, data: Any) -> str:
    response = await client.post(
        f"{server.url}/api/events",
        json={"topic": topic, "type": "t", "data": data},
        headers=server.auth("worker", "service"),
    )
    assert response.status_code == 202
    event_id: str = response.json()["id"]
    return event_id


async def next_event(ws: ClientConnection) -> dict[str, Any]:
    """The next event, skipping pings."""
    while True:
        message: dict[str, Any] = await receive(ws)
        if message.get("op") != "ping":
            return message


async def subscribe(ws: ClientConnection, *topics: str, **extra: Any) -> None:
    await send(ws, {"op": "subscribe", "topics": list(topics), **extra})
    reply = await next_event(ws)
    assert reply == {"op": "subscribed", "topics": list(topics)}


async def test_subscribe_receive_unsubscribe(
    ws_server: LiveServer, client: httpx.AsyncClient
) -> None:
    async with connect(ws_url(ws_server)) as ws:
        await subscribe(ws, "videos/*", "news")
        first = await publish(client, ws_server, "videos/1", {"n": 1})
        event = await next_event(ws)
        assert event["id"] == first and event["topic"] == "videos/1"
        assert event["data"] == {"n": 1} and event["type"] == "t"
        await send(ws, {"op": "unsubscribe", "topics": ["videos/*"]})
        assert (await next_event(ws))["op"] == "unsubscribed"
        await publish(client, ws_server, "videos/2", 2)
        last = await publish(client, ws_server, "news", 3)
        assert (await next_event(ws))["id"] == last  # videos/2 was not delivered


async def test_malformed_messages_get_errors_and_the_socket_stays(
    ws_server: LiveServer,
) -> None:
    async with connect(ws_url(ws_server)) as ws:
        for bad in ("not json", "[1]", '{"op": "dance"}', '{"op": "subscribe", "topics": "x"}'):
            await ws.send(bad)
            reply = await next_event(ws)
            assert reply["op"] == "error", bad
        await send(ws, {"op": "subscribe", "topics": ["a/../b"]})
        assert (await next_event(ws))["error"] == "invalid_input"
        await send(ws, {"op": "ping"})
        assert (await next_event(ws)) == {"op": "pong"}


async def test_a_flooding_client_is_closed_with_1008(ws_server: LiveServer) -> None:
    async with connect(ws_url(ws_server)) as ws:
        for _ in range(100):
            await send(ws, {"op": "ping"})
        messages = await receive_until_closed(ws)
        assert ws.close_code == 1008
    assert messages[-1]["error"] == "rate_limited"


async def test_acks_are_durable_per_client_id(
    ws_server: LiveServer, client: httpx.AsyncClient
) -> None:
    async with connect(ws_url(ws_server, client_id="tab-1")) as ws:
        await subscribe(ws, "orders")
        ids = [await publish(client, ws_server, "orders", n) for n in range(3)]
        received = [(await next_event(ws))["id"] for _ in range(3)]
        assert received == ids
        await send(ws, {"op": "ack", "id": ids[1]})
        await send(ws, {"op": "ping"})  # the ack has been handled once the pong is back
        assert (await next_event(ws)) == {"op": "pong"}
    later = await publish(client, ws_server, "orders", 3)
    async with connect(ws_url(ws_server, client_id="tab-1")) as ws:
        await subscribe(ws, "orders")
        assert [(await next_event(ws))["id"] for _ in range(2)] == [ids[2], later]
    async with connect(ws_url(ws_server, client_id="tab-2")) as ws:
        await send(ws, {"op": "ack", "id": "nonsense"})
        assert (await next_event(ws))["op"] == "error"


async def test_ack_without_client_id_is_an_error(ws_server: LiveServer) -> None:
    async with connect(ws_url(ws_server)) as ws:
        await send(ws, {"op": "ack", "id": "abc-1"})
        assert "client id" in (await next_event(ws))["message"]


async def test_anonymous_clients_may_only_subscribe_to_public_topics(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(public_topics=["public/*"], ws_auth_timeout=2)
    async with connect(f"ws://{server.host}:{server.port}/ws/events") as ws:
        await send(ws, {"op": "subscribe", "topics": ["private"]})
        assert (await next_event(ws))["error"] == "unauthorized"
        await subscribe(ws, "public/*")
        event_id = await publish(client, server, "public/x", 1)
        assert (await next_event(ws))["id"] == event_id


async def test_users_see_only_their_own_jobs_on_jobs_wildcards(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server()
    async with connect(ws_url(server)) as ws:  # alice
        await subscribe(ws, "jobs/*")
        for sub in ("bob", "alice"):
            response = await client.post(
                f"{server.url}/api/jobs",
                json={"kind": "demo", "params": {"steps": 1, "delay": 0}},
                headers=server.auth(sub),
            )
            assert response.status_code == 202
        mine = response.json()["id"]
        while True:
            event = await next_event(ws)
            assert event["topic"] == f"jobs/{mine}"
            if event["type"] == "succeeded":
                break


async def test_an_idle_socket_with_subscriptions_gets_pings(ws_server: LiveServer) -> None:
    # Regression: every quiet wake-up restarted the heartbeat clock, so a subscribed socket with
    # no traffic was never pinged, and proxies with idle timeouts cut it.
    async with connect(ws_url(ws_server)) as ws:
        await subscribe(ws, "quiet")
        for _ in range(3):
            assert await receive(ws, timeout=1) == {"op": "ping"}


async def test_subscribe_with_last_event_id_resumes_after_it(
    ws_server: LiveServer, client: httpx.AsyncClient
) -> None:
    ids = [await publish(client, ws_server, "resume", n) for n in range(3)]
    async with connect(ws_url(ws_server)) as ws:
        await subscribe(ws, "resume", last_event_id=ids[0])
        assert [(await next_event(ws))["id"] for _ in range(2)] == ids[1:]
        live = await publish(client, ws_server, "resume", 3)
        assert (await next_event(ws))["id"] == live


async def test_a_socket_without_subscriptions_gets_pings(ws_server: LiveServer) -> None:
    async with connect(ws_url(ws_server)) as ws:
        for _ in range(2):
            assert await receive(ws, timeout=1) == {"op": "ping"}


async def test_a_replay_too_big_for_the_outbox_is_a_reset_not_a_1008(
    ws_server: LiveServer, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: a resume whose replay overflowed the outbox closed the socket with 1008.
    monkeypatch.setattr(ws_events, "MAX_OUTBOX", 60)
    monkeypatch.setattr(ws_events, "CONTROL_ROOM", 10)
    response = await client.post(
        f"{ws_server.url}/api/events",
        json=[{"topic": "far", "type": "t", "data": n} for n in range(80)],
        headers=ws_server.auth("worker", "service"),
    )
    ids = response.json()["ids"]
    async with connect(ws_url(ws_server)) as ws:
        await subscribe(ws, "far", last_event_id=ids[0])
        reset = await next_event(ws)
        assert reset["op"] == "reset" and reset["reason"] == "too_far_behind"
        assert reset["id"] == ids[-1] and reset["topic"] == "far"
        live = await publish(client, ws_server, "far", "live")
        assert (await next_event(ws))["id"] == live  # the socket stays open


async def test_replays_of_one_subscribe_share_the_byte_budget(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(max_replay_bytes=1000)
    start = await publish(client, server, "other", 0)
    for topic in ("p1", "p2"):
        for _ in range(3):
            await publish(client, server, topic, "x" * 298)  # 300 bytes: 900 per topic
    async with connect(ws_url(server)) as ws:
        await subscribe(ws, "p1", "p2", last_event_id=start)
        assert [(await next_event(ws))["topic"] for _ in range(3)] == ["p1"] * 3
        reset = await next_event(ws)
        assert (reset["op"], reset["topic"], reset["reason"]) == ("reset", "p2", "too_far_behind")


async def test_the_replays_of_one_subscribe_arrive_in_id_order(
    ws_server: LiveServer, client: httpx.AsyncClient
) -> None:
    # Regression: each topic's replay was sent whole, one after the other, so a client that
    # resumed from the last id it received got duplicates, or missed what came before it.
    start = await publish(client, ws_server, "other", 0)
    ids = [await publish(client, ws_server, topic, n) for n in range(3) for topic in ("a", "b")]
    async with connect(ws_url(ws_server)) as ws:
        await subscribe(ws, "a", "b", "*", last_event_id=start)  # "*" overlaps: sent once
        received = [(await next_event(ws))["id"] for _ in ids]
        live = await publish(client, ws_server, "b", "live")
        assert (await next_event(ws))["id"] == live
    assert received == ids


async def test_a_socket_counts_once_against_the_per_subject_cap(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    # Regression: each topic of a socket counted as a stream, so one socket with as many
    # topics as the cap locked its user out of every other stream.
    server = make_server(max_streams_per_subject=2, heartbeat_interval=0.2)
    sse_url = f"{server.url}/api/events"
    async with connect(ws_url(server)) as ws:
        await subscribe(ws, "a", "b", "c")
        async with client.stream(
            "GET", sse_url, params={"topic": "d"}, headers=server.auth()
        ) as one:
            assert one.status_code == 200
            over = await client.get(sse_url, params={"topic": "e"}, headers=server.auth())
            assert over.status_code == 429  # the socket and this stream: two
        await send(ws, {"op": "unsubscribe", "topics": ["a", "b", "c"]})
        assert (await next_event(ws))["op"] == "unsubscribed"
        for _ in range(2):  # the socket no longer holds a stream, and the first one ended
            async with client.stream(
                "GET", sse_url, params={"topic": "d"}, headers=server.auth()
            ) as again:
                assert again.status_code == 200
