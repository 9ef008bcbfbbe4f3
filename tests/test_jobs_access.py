"""Wildcard job streams across instances: jobs created, shared and revoked on one instance are
filtered correctly on the others (jobs/access.py), with a shared Redis queue and a PostgreSQL
store, and a Redis broker or the store's database as the broker, as in production."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.jobs_support import submit
from tests.services import (
    POSTGRES_URL,
    REDIS_URL,
    delete_prefix,
    drop_schema,
    needs_services,
    redis_prefix,
    redis_url,
)
from tests.support import EventStream, LiveServer

pytestmark = needs_services

#: Every stream watches all jobs plus an ordinary topic whose events mark "nothing before".
TOPICS = {"topic": ["jobs/*", "marker"]}


@pytest.fixture(params=["redis", "postgres"])
def shared(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """One deployment's broker, queue and store; no worker, so jobs stay queued. The broker is
    Redis, or the PostgreSQL store's own database (no broker URL)."""
    for prefix in redis_prefix():
        store_url = f"{POSTGRES_URL}?schema=a_{prefix[-12:]}"
        broker = {"broker_url": redis_url(prefix)} if request.param == "redis" else {}
        yield {**broker, "queue_url": f"{REDIS_URL}?queue={prefix}", "store_url": store_url}
        drop_schema(store_url)
        delete_prefix(f"saq:{prefix}")


@pytest.fixture
def instance(
    shared: dict[str, Any], make_server: Callable[..., LiveServer], tmp_path: Path
) -> Callable[[str], LiveServer]:
    def start(name: str) -> LiveServer:
        return make_server(data_dir=tmp_path / name, **shared)

    return start


async def publish(client: httpx.AsyncClient, server: LiveServer, topic: str, n: int) -> str:
    response = await client.post(
        f"{server.url}/api/events",
        json={"topic": topic, "type": "marker" if topic == "marker" else "note", "data": {"n": n}},
        headers=server.auth("svc", "service"),
    )
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


def seen(event: Any) -> tuple[str, Any]:
    data = orjson.loads(event.data or "null")
    return event.event or "", data.get("n", data.get("id"))


async def test_wildcard_streams_follow_jobs_and_grants_made_on_another_instance(
    instance: Callable[[str], LiveServer], client: httpx.AsyncClient
) -> None:
    a, b = instance("a"), instance("b")
    admin = b.auth("ops", "admin")
    async with (
        EventStream(client, f"{b.url}/api/events", params=TOPICS, headers=b.auth()) as alice,
        EventStream(client, f"{b.url}/api/events", params=TOPICS, headers=b.auth("bob")) as bob,
        EventStream(client, f"{b.url}/api/events", params={"topic": "*"}, headers=admin) as every,
    ):
        job = await submit(client, a, "demo")  # created on A: B learns its owner (A1)
        assert seen(await alice.next()) == ("state", job["id"])
        topic = f"jobs/{job['id']}"

        shared = await client.put(f"{a.url}/api/jobs/{job['id']}/readers/bob", headers=a.auth())
        assert shared.status_code == 200, shared.text
        # bob's wildcard stream gets the job whole at once (access.A6), then its events
        assert seen(await bob.next()) == ("shared", job["id"])
        await publish(client, a, topic, 1)
        assert seen(await bob.next()) == ("note", 1)  # the grant made on A holds on B

        revoked = await client.delete(f"{a.url}/api/jobs/{job['id']}/readers/bob", headers=a.auth())
        assert revoked.status_code == 200, revoked.text
        await publish(client, a, topic, 2)
        await publish(client, a, "marker", 3)
        assert seen(await bob.next()) == ("marker", 3)  # the revoke too: note 2 never came
        assert [seen(e) for e in await alice.take(4)] == [
            ("shared", job["id"]),
            ("note", 1),
            ("note", 2),
            ("marker", 3),
        ]
        everything = await every.take(5)  # the announcements between instances are not events
        expected = [("state", job["id"]), ("shared", job["id"]), ("note", 1), ("note", 2)]
        expected.append(("marker", 3))
        assert [seen(e) for e in everything] == expected

    resume = {**admin, "Last-Event-ID": everything[0].id or ""}
    async with EventStream(
        client, f"{b.url}/api/events", params={"topic": "*"}, headers=resume
    ) as again:
        assert [seen(e) for e in await again.take(4)] == expected[1:]  # nor replayed


async def test_an_instance_started_later_knows_earlier_jobs_live_and_in_replay(
    instance: Callable[[str], LiveServer], client: httpx.AsyncClient
) -> None:
    a = instance("a")
    before = await publish(client, a, "marker", 0)
    finished = await submit(client, a, "demo")
    cancelled = await client.post(f"{a.url}/api/jobs/{finished['id']}/cancel", headers=a.auth())
    assert cancelled.json()["state"] == "cancelled"
    queued = await submit(client, a, "demo")

    late = instance("late")  # never saw either job being created
    live_url, headers = f"{late.url}/api/events", late.auth()
    async with EventStream(client, live_url, params=TOPICS, headers=headers) as live:
        # a job still queued when the instance started is known at once (A2): its first live
        # event is delivered, not lost to a lookup
        note = await publish(client, a, f"jobs/{queued['id']}", 7)
        assert seen(await live.next()) == ("note", 7)

    # the replay of a finished job this instance never heard of is looked up first (A4)
    resume = {**headers, "Last-Event-ID": before}
    async with EventStream(client, live_url, params=TOPICS, headers=resume) as replay:
        replayed = await replay.take(4)
    assert [seen(e) for e in replayed] == [
        ("state", finished["id"]),
        ("cancelled", finished["id"]),
        ("state", queued["id"]),
        ("note", 7),
    ]
    assert replayed[-1].id == note
