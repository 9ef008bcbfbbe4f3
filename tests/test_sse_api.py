"""The SSE stream and the publish endpoint, against a real uvicorn server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest

from tests.services import needs_services, redis_prefix, redis_url
from tests.support import EventStream, LiveServer, wait_until

LiveServerFactory = Callable[..., LiveServer]


@pytest.fixture(params=["embedded", "asgi-streams", pytest.param("redis", marks=needs_services)])
def server(request: pytest.FixtureRequest, make_server: LiveServerFactory) -> Iterator[LiveServer]:
    """Every stream test runs over the embedded default and over the shared Redis broker, and
    with streams written by their ASGI task (as on any server) as well as by the connection."""
    if request.param != "redis":
        yield make_server(heartbeat_interval=0.2, native_streams=request.param == "embedded")
        return
    for prefix in redis_prefix():
        yield make_server(heartbeat_interval=0.2, broker_url=redis_url(prefix))


async def publish(
    client: httpx.AsyncClient, server: LiveServer, body: object, sub: str = "worker"
) -> httpx.Response:
    return await client.post(
        f"{server.url}/api/events", json=body, headers=server.auth(sub, "service")
    )


def stream(
    client: httpx.AsyncClient, server: LiveServer, *topics: str, **kwargs: object
) -> EventStream:
    headers = kwargs.pop("headers", None) or server.auth()
    params = {"topic": list(topics), **kwargs}
    return EventStream(client, f"{server.url}/api/events", params=params, headers=headers)  # type: ignore[arg-type]


async def test_subscriber_receives_published_event(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    async with stream(client, server, "videos/42") as events:
        assert events.response is not None and events.response.status_code == 200
        headers = events.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        published = await publish(
            client,
            server,
            {"topic": "videos/42", "type": "video.status", "data": {"status": "QUEUED"}},
        )
        assert published.status_code == 202
        event = await events.next()
        assert (event.event, event.data, event.id) == (
            "video.status",
            '{"status":"QUEUED"}',
            published.json()["id"],
        )
        assert events.decoder.retry == 3000  # sent once, at the start


async def test_data_is_exactly_what_was_published(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    payloads = [{"text": "line1\nline2\r\n", "n": [1, 2.5, None]}, "plain", 7, None, []]
    async with stream(client, server, "a") as events:
        response = await publish(
            client, server, [{"topic": "a", "type": "t", "data": p} for p in payloads]
        )
        assert response.status_code == 202 and len(response.json()["ids"]) == 5
        received = await events.take(5)
    import json

    assert [json.loads(e.data or "") for e in received] == payloads
    assert [e.id for e in received] == response.json()["ids"]


async def test_heartbeats_are_comments_while_idle(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    events = stream(client, server, "quiet")
    events.decoder.keep_comments = True
    async with events:
        beats = await events.take(3, timeout=3)  # interval is 0.2 s in these tests
    assert all(b.comment == "ping" for b in beats)


async def test_wildcards_and_several_topics_on_one_connection(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    async with stream(client, server, "tasks/*", "videos/42") as events:
        await publish(
            client,
            server,
            [
                {"topic": "tasks/1", "type": "t", "data": 1},
                {"topic": "videos/41", "type": "t", "data": 2},
                {"topic": "videos/42", "type": "t", "data": 3},
                {"topic": "tasks/2/x", "type": "t", "data": 4},
            ],
        )
        assert [e.data for e in await events.take(3)] == ["1", "3", "4"]


async def test_resume_under_concurrent_publishing_has_no_gap_or_duplicate(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    total = 300
    started = asyncio.Event()

    async def publisher() -> None:
        for n in range(0, total, 10):
            await publish(
                client, server, [{"topic": "r", "type": "t", "data": n + i} for i in range(10)]
            )
            started.set()

    received: list[int] = []
    async with stream(client, server, "r") as first:
        task = asyncio.create_task(publisher())
        await started.wait()
        for event in await first.take(15):
            received.append(int(event.data or ""))
        last_id = event.id or ""
    # reconnect mid-flight, as EventSource would, with Last-Event-ID
    headers = {**server.auth(), "Last-Event-ID": last_id}
    async with stream(client, server, "r", headers=headers) as second:
        while len(received) < total:
            received.append(int((await second.next()).data or ""))
    await task
    assert received == list(range(total))


async def test_query_parameter_resume_for_clients_without_headers(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    ids = (
        await publish(client, server, [{"topic": "q", "type": "t", "data": n} for n in range(3)])
    ).json()["ids"]
    async with stream(client, server, "q", last_event_id=ids[0]) as events:
        assert [e.data for e in await events.take(2)] == ["1", "2"]


async def test_reset_frame_when_history_cannot_cover_the_gap(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(history_max_events_per_topic=3)
    ids = (
        await publish(client, server, [{"topic": "g", "type": "t", "data": n} for n in range(6)])
    ).json()["ids"]
    await asyncio.wrap_future(server.run(server.jc.hub.broker.trim()))  # type: ignore[attr-defined]
    headers = {**server.auth(), "Last-Event-ID": ids[0]}
    async with stream(client, server, "g", headers=headers) as events:
        reset = await events.next()
        assert reset.event == "reset"
        assert reset.id == ids[-1]  # resume point: the head of the history
        assert '"reason":"trimmed"' in (reset.data or "")
        await publish(client, server, {"topic": "g", "type": "t", "data": "live"})
        assert (await events.next()).data == '"live"'
    for bad_id in ["garbage", "otherepoch-1"]:
        async with stream(
            client, server, "g", headers={**server.auth(), "Last-Event-ID": bad_id}
        ) as events:
            assert (await events.next()).event == "reset"


async def test_history_survives_a_server_restart(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    first = make_server()
    ids = (
        await publish(client, first, [{"topic": "h", "type": "t", "data": n} for n in range(3)])
    ).json()["ids"]
    first.stop()
    second = make_server()
    async with stream(
        client, second, "h", headers={**second.auth(), "Last-Event-ID": ids[0]}
    ) as events:
        assert [(e.id, e.data) for e in await events.take(2)] == [(ids[1], "1"), (ids[2], "2")]


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({}, 401, "missing_token"),
        ({"Authorization": "Bearer not.a.token"}, 401, "malformed_token"),
        ({"Authorization": "Basic abc"}, 401, "malformed_header"),
    ],
)
async def test_subscribing_needs_a_valid_token(
    server: LiveServer, client: httpx.AsyncClient, headers: dict[str, str], status: int, reason: str
) -> None:
    response = await client.get(f"{server.url}/api/events", params={"topic": "a"}, headers=headers)
    assert response.status_code == status
    assert response.json()["reason"] == reason
    assert "Traceback" not in response.text


async def test_expired_and_forged_tokens_are_refused(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    expired = server.token(ttl=-120)
    response = await client.get(f"{server.url}/api/events", params={"topic": "a", "token": expired})
    assert (response.status_code, response.json()["reason"]) == (401, "token_expired")
    forged = server.token()[:-4] + "AAAA"
    response = await client.get(f"{server.url}/api/events", params={"topic": "a", "token": forged})
    assert (response.status_code, response.json()["reason"]) == (401, "bad_signature")


async def test_public_topics_need_no_token(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(public_topics="news/*,status")
    async with EventStream(
        client, f"{server.url}/api/events", params={"topic": ["news/1", "status"]}
    ) as events:
        await publish(client, server, {"topic": "news/1", "type": "t", "data": 1})
        assert (await events.next()).data == "1"
    response = await client.get(f"{server.url}/api/events", params={"topic": ["news/1", "private"]})
    assert response.status_code == 401


async def test_publishing_needs_the_service_or_admin_role(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    body = {"topic": "a", "type": "t", "data": 1}
    url = f"{server.url}/api/events"
    assert (await client.post(url, json=body)).status_code == 401
    denied = await client.post(url, json=body, headers=server.auth("alice", "user"))
    assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
    assert (
        await client.post(url, json=body, headers=server.auth("root", "admin"))
    ).status_code == 202
    granted = await client.post(url, json=body, headers=server.auth("bob", "user", grants=["a"]))
    assert granted.status_code == 202


@pytest.mark.parametrize(
    "body",
    [
        {"topic": "jobs/../x", "type": "t"},
        {"topic": "a", "type": "bad type"},
        {"topic": "a", "type": "reset"},
        {"type": "t"},
        {"topic": "a", "type": "t", "extra": 1},
        [],
    ],
)
async def test_bad_events_are_422_and_nothing_is_published(
    server: LiveServer, client: httpx.AsyncClient, body: object
) -> None:
    response = await publish(client, server, body)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"
    assert server.jc.hub.stats.published == 0


async def test_malformed_json_is_422(server: LiveServer, client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{server.url}/api/events",
        content=b'{"topic": "a", ',
        headers={**server.auth("w", "service"), "content-type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"


async def test_bad_topics_in_a_subscription_are_422(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    for topic in ["a//b", "a/*/b", "../etc"]:
        response = await client.get(
            f"{server.url}/api/events", params={"topic": topic}, headers=server.auth()
        )
        assert response.status_code == 422, topic
    response = await client.get(f"{server.url}/api/events", headers=server.auth())
    assert response.status_code == 422


async def test_oversize_events_and_bodies_are_413(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    big = "x" * (64 * 1024)
    response = await publish(client, server, {"topic": "a", "type": "t", "data": big})
    assert response.status_code == 413 and "limit is 65536" in response.json()["message"]
    batch = [{"topic": "a", "type": "t", "data": n} for n in range(101)]
    assert (await publish(client, server, batch)).status_code == 413
    huge = b'{"topic":"a","type":"t","data":"' + b"x" * (2 * 1024 * 1024) + b'"}'
    response = await client.post(
        f"{server.url}/api/events",
        content=huge,
        headers={**server.auth("w", "service"), "content-type": "application/json"},
    )
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"

    async def chunked() -> object:
        for _ in range(40):
            yield b"x" * 65536

    response = await client.post(
        f"{server.url}/api/events",
        content=chunked(),  # type: ignore[arg-type]
        headers={**server.auth("w", "service"), "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert server.jc.hub.stats.published == 0


async def test_health_counts_connected_clients(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    health = (await client.get(f"{server.url}/health")).json()
    assert health["status"] == "ok" and health["connected_clients"] == 0
    events = stream(client, server, "a")
    events.decoder.keep_comments = True
    async with events:
        await events.next()  # wait until the stream is live (first heartbeat)
        assert (await client.get(f"{server.url}/health")).json()["connected_clients"] == 1


async def test_a_vanished_client_is_unsubscribed_at_once(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    events = stream(client, server, "a")
    events.decoder.keep_comments = True
    async with events:
        await events.next()
    await wait_until(lambda: server.jc.hub.subscriber_count == 0)


async def test_a_slow_subscriber_does_not_delay_a_fast_one(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(max_pending_events=20)
    token = server.token()
    # A raw socket that subscribes and then never reads: its buffers fill up.
    slow = socket.create_connection((server.host, server.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(f"GET /api/events?topic=s&token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        await wait_until(lambda: server.jc.hub.subscriber_count == 1)
        async with stream(client, server, "s") as fast:
            payload = "y" * 32_000
            count = 200
            reader = asyncio.create_task(fast.take(count, timeout=20))
            for _ in range(0, count, 10):
                await publish(
                    client,
                    server,
                    [{"topic": "s", "type": "t", "data": payload} for _ in range(10)],
                )
            received = await reader
            assert len(received) == count and all(e.data == f'"{payload}"' for e in received)
        assert server.jc.hub.stats.evicted == 1  # the slow one, and only it
    finally:
        slow.close()


def test_openapi_documents_the_surface(server: LiveServer) -> None:
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert (
        "text/event-stream" in schema["paths"]["/api/events"]["get"]["responses"]["200"]["content"]
    )
    assert "post" in schema["paths"]["/api/events"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


async def read_raw(
    client: httpx.AsyncClient,
    server: LiveServer,
    topic: str,
    on_open: Callable[[], Awaitable[httpx.Response]],
    done: Callable[[str], bool] = lambda text: False,
) -> str:
    """A stream's raw text: its opening, then ``on_open()``, then until ``done`` or its end."""
    params, headers = {"topic": topic}, server.auth()
    url = f"{server.url}/api/events"
    async with client.stream("GET", url, params=params, headers=headers) as response:
        chunks = response.aiter_text()
        async with asyncio.timeout(5):
            text = await anext(chunks)  # the opening: the stream is subscribed
            assert (await on_open()).status_code == 202
            async for chunk in chunks:
                text += chunk
                if done(text):
                    break
    return text


async def test_retry_is_sent_once_at_the_start(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    text = await read_raw(
        client,
        server,
        "once",
        lambda: publish(
            client, server, [{"topic": "once", "type": "t", "data": n} for n in range(3)]
        ),
        lambda text: text.count(": ping") >= 2 and text.count("event: t") == 3,
    )
    epoch = server.jc.hub.broker.epoch
    # the head when it opened (E3): the id a browser resumes from if cut before any event
    assert text.startswith(f"id: {epoch}-0\nretry: 3000\n\n")
    assert text.count("retry:") == 1  # never repeated with events or heartbeats


async def test_an_evicted_stream_ends_with_a_retry_hint(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(max_pending_events=5)
    # one batch of more events than the subscriber may have pending: it is evicted at once
    flood = [{"topic": "f", "type": "t", "data": n} for n in range(50)]
    text = await read_raw(client, server, "f", lambda: publish(client, server, flood))
    opening, closing = text.split("\n\n", 1)
    assert closing.startswith(": closed: slow_consumer")
    assert closing.endswith("retry: 3000\n\n")
    assert server.jc.hub.stats.evicted == 1
    # Regression: evicted before its first event, the stream had no id to resume from, so a
    # client came back without one and the flood was lost. Its opening carries one (E3).
    resume = opening.splitlines()[0].removeprefix("id: ")
    headers = {**server.auth(), "Last-Event-ID": resume}
    async with EventStream(
        client, f"{server.url}/api/events", params={"topic": "f"}, headers=headers
    ) as stream:
        assert [event.data for event in await stream.take(50)] == [str(n) for n in range(50)]


async def test_real_traffic_resets_the_heartbeat_clock(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(heartbeat_interval=1.0)
    url = f"{server.url}/api/events"
    params = {"topic": "busy"}
    async with EventStream(client, url, params=params, headers=server.auth(), comments=True) as s:
        loop = asyncio.get_running_loop()
        until, n = loop.time() + 2.5, 0  # events for two and a half heartbeat intervals
        while loop.time() < until:
            await publish(client, server, {"topic": "busy", "type": "t", "data": n})
            event = await s.next()
            assert (event.comment, event.data) == (None, str(n)), "a heartbeat amid traffic"
            n += 1
        assert (await s.next(timeout=3)).comment == "ping"  # quiet again: heartbeats resume


async def test_a_replay_over_the_byte_budget_is_a_reset(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    server = make_server(max_replay_bytes=1000)
    body = [{"topic": "big", "type": "t", "data": "x" * 298} for _ in range(5)]  # 300 bytes each
    ids = (await publish(client, server, body)).json()["ids"]
    headers = {**server.auth(), "Last-Event-ID": ids[0]}  # 1200 bytes missed
    async with stream(client, server, "big", headers=headers) as events:
        reset = await events.next()
    assert reset.event == "reset" and reset.id == ids[-1]
    assert '"reason":"too_far_behind"' in (reset.data or "")
    headers = {**server.auth(), "Last-Event-ID": ids[2]}  # 600 bytes: replayed
    async with stream(client, server, "big", headers=headers) as events:
        assert [e.id for e in await events.take(2)] == ids[3:]
