"""``/metrics`` reports what the hub did, in Prometheus text format."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from jobcast.subscription import Subscription
from jobcast.topics import TopicPattern
from tests.jobs_support import submit, watch
from tests.support import EventStream, LiveServer, wait_until
from tests.ws_support import receive, receive_op, send

T = TypeVar("T")


async def publish(client: httpx.AsyncClient, server: LiveServer, topic: str, data: Any) -> None:
    response = await client.post(
        f"{server.url}/api/events",
        json={"topic": topic, "type": "t", "data": data},
        headers=server.auth("w", "service"),
    )
    assert response.status_code == 202, response.text


def samples(text: str) -> dict[str, float]:
    return {
        sample.name + (str(sorted(sample.labels.items())) if sample.labels else ""): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_publishing_delivery_and_resets(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    url = f"{server.url}/api/events"
    async with EventStream(client, url, params={"topic": "m"}, headers=server.auth()) as events:
        response = await client.post(
            url,
            json=[{"topic": "m", "type": "t", "data": n} for n in range(3)],
            headers=server.auth("w", "service"),
        )
        assert response.status_code == 202
        await events.take(3)
        scrape = await client.get(f"{server.url}/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    values = samples(scrape.text)
    assert values["jobcast_events_published_total"] == 3
    assert values["jobcast_events_delivered_total"] == 3
    assert values["jobcast_subscriptions"] == 1
    assert values["jobcast_publish_to_write_seconds_count"] >= 1
    async with EventStream(
        client, url, params={"topic": "m", "last_event_id": "junk-1"}, headers=server.auth()
    ) as events:
        assert (await events.next()).event == "reset"
    values = samples((await client.get(f"{server.url}/metrics")).text)
    assert values["jobcast_resets_total[('reason', 'history_lost')]"] == 1  # another epoch
    assert values["jobcast_replays_total"] == 1


async def scrape(client: httpx.AsyncClient, server: LiveServer) -> dict[str, float]:
    response = await client.get(f"{server.url}/metrics")
    assert response.status_code == 200
    return samples(response.text)


async def on_server(server: LiveServer, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the server's loop (the hub's objects belong to it)."""
    result: T = await asyncio.wrap_future(server.run(coroutine))
    return result


async def test_connections_are_counted_by_transport(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, server, "demo", {"steps": 100, "delay": 0.1})
    token = server.token()
    base = f"ws://{server.host}:{server.port}"
    async with (
        EventStream(client, f"{server.url}/api/events", params={"topic": "a", "token": token}),
        EventStream(client, f"{server.url}/api/jobs/{job['id']}/events", params={"token": token}),
        connect(f"{base}/ws/events?token={token}") as events_socket,
        connect(f"{base}/ws/jobs/{job['id']}?token={token}") as job_socket,
        connect(f"{base}/ws/events?token={token}"),  # no subscription yet: still a connection
    ):
        await send(events_socket, {"op": "subscribe", "topics": ["a", "b/*"]})
        assert (await receive_op(events_socket))["op"] == "subscribed"
        assert (await receive(job_socket))["type"] == "snapshot"
        await wait_until(lambda: server.jc.hub.subscriber_count == 5)
        values = await scrape(client, server)
    assert values["jobcast_connections[('transport', 'sse')]"] == 2
    assert values["jobcast_connections[('transport', 'websocket')]"] == 3
    assert values["jobcast_subscriptions"] == 5  # two SSE, two patterns, one job socket
    await wait_until(lambda: server.jc.metrics.websockets == 0)
    values = await scrape(client, server)
    assert values["jobcast_connections[('transport', 'websocket')]"] == 0


async def test_dropped_events_are_counted_by_why_their_stream_ended(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(max_pending_events=3)
    hub = server.jc.hub
    pattern = (TopicPattern("d", None),)

    async def subscribe() -> Subscription:  # a subscriber that never reads
        subscription, _ = await hub.subscribe(pattern)
        return subscription

    slow, gone = await on_server(server, subscribe()), await on_server(server, subscribe())
    for n in range(2):
        await publish(client, server, "d", n)
    server.call(hub.unsubscribe, gone)  # its connection ended before it was closed
    for n in range(2, 4):  # the fourth finds three pending: evicted
        await publish(client, server, "d", n)
    await wait_until(lambda: slow.closed)
    values = await scrape(client, server)
    assert values["jobcast_events_dropped_total[('reason', 'client')]"] == 2
    assert values["jobcast_events_dropped_total[('reason', 'slow_consumer')]"] == 3
    assert values["jobcast_events_dropped_total[('reason', 'draining')]"] == 0
    assert values["jobcast_slow_consumer_evictions_total"] == 1


async def test_jobs_by_state_durations_and_store_writes(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    before = await scrape(client, server)
    assert before["jobcast_jobs[('state', 'succeeded')]"] == 0
    done = await submit(client, server, "demo", {"steps": 20, "delay": 0.01})
    failed = await submit(client, server, "demo", {"steps": 3, "delay": 0, "fail_at": 2})
    for job in (done, failed):
        events = await watch(client, server, job["id"])
        assert events[-1][0] in ("succeeded", "failed")
    values = await scrape(client, server)
    assert values["jobcast_jobs[('state', 'succeeded')]"] == 1
    assert values["jobcast_jobs[('state', 'failed')]"] == 1
    assert values["jobcast_jobs[('state', 'running')]"] == 0
    succeeded = "jobcast_job_duration_seconds_count[('state', 'succeeded')]"
    assert values[succeeded] == 1
    assert values["jobcast_job_duration_seconds_count[('state', 'failed')]"] == 1
    assert values["jobcast_job_duration_seconds_sum[('state', 'succeeded')]"] >= 0.2
    assert values["jobcast_job_duration_seconds_bucket[('le', '0.1'), ('state', 'succeeded')]"] == 0
    # two inserts, and each job's queued, running and terminal states at the least; progress
    # writes are coalesced, so 20 progress reports cost far fewer than 20 rows
    rows = values["jobcast_store_rows_written_total"]
    assert 8 <= rows < 8 + 20
    assert 1 <= values["jobcast_store_transactions_total"] <= rows
    assert values["jobcast_store_errors_total[('operation', 'write')]"] == 0


async def test_broker_and_store_errors_are_counted(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    server = make_server()
    await publish(client, server, "e", 1)
    for database, table in (("events.db", "events"), ("jobs.db", "jobs")):
        with contextlib.closing(sqlite3.connect(tmp_path / database)) as db:
            db.execute(f"DROP TABLE {table}")  # as a damaged disk would leave it
            db.commit()
    response = await client.post(
        f"{server.url}/api/events",
        json={"topic": "e", "type": "t", "data": 2},
        headers=server.auth("w", "service"),
    )
    assert response.status_code == 503
    replay = await client.get(
        f"{server.url}/api/events",
        params={"topic": "e", "last_event_id": f"{server.jc.hub.broker.epoch}-1"},
        headers=server.auth(),
    )
    assert replay.status_code == 503
    jobs = await client.get(f"{server.url}/api/jobs", headers=server.auth())
    assert jobs.status_code == 503
    values = await scrape(client, server)
    assert values["jobcast_broker_errors_total[('operation', 'publish')]"] == 1
    assert values["jobcast_broker_errors_total[('operation', 'replay')]"] == 1
    assert values["jobcast_store_errors_total[('operation', 'read')]"] >= 1
    assert not any(name.startswith("jobcast_jobs[") for name in values)  # could not count them


async def test_events_pending_behind_a_stuck_write_are_dropped_as_stuck(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(send_timeout=0.5, heartbeat_interval=0.2)
    with socket.create_connection((server.host, server.port)) as silent:  # never reads
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request = f"GET /api/events?topic=s&token={server.token()} HTTP/1.1\r\nHost: x\r\n\r\n"
        silent.sendall(request.encode())
        await wait_until(lambda: server.jc.hub.subscriber_count == 1)
        batch = [{"topic": "s", "type": "big", "data": "z" * 60_000} for _ in range(10)]
        for _ in range(12):  # far more than the kernel buffers of the connection hold
            response = await client.post(
                f"{server.url}/api/events", json=batch, headers=server.auth("w", "service")
            )
            assert response.status_code == 202
        await wait_until(lambda: server.jc.hub.subscriber_count == 0)
        values = await scrape(client, server)
    assert values["jobcast_events_dropped_total[('reason', 'stuck')]"] >= 1
    assert values["jobcast_connections[('transport', 'sse')]"] == 0
