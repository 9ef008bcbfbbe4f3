"""Idempotency keys on ``POST /api/jobs`` and ``POST /api/events`` (``jobs/idempotency.py``,
``stores/sql.py`` Q7)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.jobs_support import poll_until_done
from tests.services import (
    POSTGRES_URL,
    REDIS_URL,
    delete_prefix,
    drop_schema,
    needs_services,
    redis_prefix,
    redis_url,
)
from tests.support import EventStream, LiveServer, eventually

DEMO = {"kind": "demo", "params": {"steps": 1, "delay": 0}}


async def post(
    client: httpx.AsyncClient,
    server: LiveServer,
    body: dict[str, Any],
    key: str | None = None,
    sub: str = "alice",
) -> httpx.Response:
    headers = server.auth(sub)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(f"{server.url}/api/jobs", json=body, headers=headers)


async def test_a_retried_submission_returns_the_first_job(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    first = await post(client, server, DEMO, "order-17")
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = await post(client, server, DEMO, "order-17")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    as_field = await post(client, server, {**DEMO, "idempotency_key": "order-17"})
    assert as_field.status_code == 200 and as_field.json()["id"] == first.json()["id"]

    different = await post(client, server, {**DEMO, "params": {"steps": 2}}, "order-17")
    assert different.status_code == 409, different.text
    assert "already used for a different request" in different.json()["message"]
    scheduled = await post(client, server, {**DEMO, "priority": 3}, "order-17")
    assert scheduled.status_code == 409  # the scheduling fields are part of the request

    bob = await post(client, server, DEMO, "order-17", sub="bob")  # keys are per owner
    assert bob.status_code == 202 and bob.json()["id"] != first.json()["id"]
    fresh = await post(client, server, DEMO, "order-18")
    assert fresh.status_code == 202 and fresh.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    ("key", "field", "message"),
    [
        ("x" * 256, None, "1 to 255 printable ASCII"),
        (None, "tab\there", "printable ASCII"),
        (None, "", "1 to 255"),
        ("one", "two", "differ"),
        (None, 5, "must be a string"),
    ],
)
async def test_bad_keys_are_refused(
    server: LiveServer,
    client: httpx.AsyncClient,
    key: str | None,
    field: Any,
    message: str,
) -> None:
    body = DEMO if field is None else {**DEMO, "idempotency_key": field}
    response = await post(client, server, body, key)
    assert response.status_code == 422, response.text
    assert message in response.json()["message"]


async def test_deleting_the_job_frees_its_key(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    first = (await post(client, server, DEMO, "k")).json()
    url = f"{server.url}/api/jobs/{first['id']}"
    await poll_until_done(client, server, first["id"])
    assert (await client.delete(url, headers=server.auth())).status_code == 204
    again = await post(client, server, DEMO, "k")
    assert again.status_code == 202 and again.json()["id"] != first["id"]


async def fifty_at_once(
    client: httpx.AsyncClient, servers: list[LiveServer], key: str
) -> list[httpx.Response]:
    return await asyncio.gather(
        *(post(client, servers[index % len(servers)], DEMO, key) for index in range(50))
    )


def one_job(responses: list[httpx.Response]) -> None:
    assert all(r.status_code in (200, 202) for r in responses), [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert [r.status_code for r in responses].count(202) == 1


async def test_fifty_concurrent_submissions_with_one_key_make_one_job(
    server: LiveServer,
) -> None:
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(timeout=20, limits=limits) as client:
        one_job(await fifty_at_once(client, [server], "burst"))


@pytest.fixture(params=["redis", "postgres"])
def shared(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """One deployment of several instances: Redis queue, a PostgreSQL store (no worker: the
    jobs stay queued), and a Redis broker or the store's database as the broker."""
    for prefix in redis_prefix():
        store_url = f"{POSTGRES_URL}?schema=i_{prefix[-12:]}"
        broker = {"broker_url": redis_url(prefix)} if request.param == "redis" else {}
        yield {**broker, "queue_url": f"{REDIS_URL}?queue={prefix}", "store_url": store_url}
        drop_schema(store_url)
        delete_prefix(f"saq:{prefix}")


# FastAPI builds a router's routes on its first request, inside warnings.catch_warnings(),
# which is not thread-safe: two in-process servers (two threads) building at once may lose its
# "ignore" filter, and pydantic's warning then fails the request under pytest's warnings-as-
# errors. So each server answers one submission before the burst; the servers of a real
# deployment are processes.
@needs_services
async def test_one_key_makes_one_job_and_one_publish_across_two_instances(
    shared: dict[str, Any], make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    servers = [make_server(data_dir=tmp_path / name, **shared) for name in ("one", "two")]
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(timeout=20, limits=limits) as client:
        for server in servers:  # see below
            assert (await post(client, server, DEMO, f"warm-{server.url}")).status_code == 202
        one_job(await fifty_at_once(client, servers, "burst"))
        different = await post(client, servers[1], {**DEMO, "params": {"steps": 3}}, "burst")
        assert different.status_code == 409

        event = {"topic": "orders/9", "type": "paid", "data": {"n": 1}}
        answers = await asyncio.gather(
            *(publish(client, servers[index % 2], event, "pay-9") for index in range(20))
        )
        ids = {r.json()["id"] for r in answers if r.status_code in (200, 202)}
        assert len(ids) == 1, [r.text for r in answers]
        assert [r.status_code for r in answers].count(202) == 1  # one publish, the rest replays
        assert all(r.status_code in (200, 202, 409) for r in answers)
        again = await publish(client, servers[1], event, "pay-9")
        assert again.status_code == 200 and again.json()["id"] in ids
        assert again.headers["Idempotent-Replayed"] == "true"


async def publish(
    client: httpx.AsyncClient, server: LiveServer, body: Any, key: str | None = None
) -> httpx.Response:
    headers = server.auth("svc", "service")
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(f"{server.url}/api/events", json=body, headers=headers)


async def test_a_retried_publish_is_acknowledged_with_the_original_ids_and_sent_once(
    server: LiveServer,
) -> None:
    batch = [{"topic": "orders/1", "type": "paid", "data": {"n": n}} for n in range(2)]
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(timeout=20, limits=limits) as client:
        marker = (await publish(client, server, {"topic": "orders/1", "type": "mark"})).json()
        answers = await asyncio.gather(
            *(publish(client, server, batch, "pay-1") for _ in range(20))
        )
        acknowledged = [r.json()["ids"] for r in answers if r.status_code in (200, 202)]
        assert acknowledged and all(ids == acknowledged[0] for ids in acknowledged)
        assert [r.status_code for r in answers].count(202) == 1
        busy = [r for r in answers if r.status_code not in (200, 202)]
        assert all(r.status_code == 409 and "under way" in r.json()["message"] for r in busy)
        again = await publish(client, server, batch, "pay-1")  # a retry after the first ended
        assert again.status_code == 200 and again.json()["ids"] == acknowledged[0]
        assert again.headers["Idempotent-Replayed"] == "true"
        other = await publish(client, server, batch[:1], "pay-1")
        assert other.status_code == 409 and "different publish" in other.json()["message"]
        single = await publish(client, server, batch[0], "pay-2")
        assert (await publish(client, server, batch[0], "pay-2")).json() == single.json()
        end = (await publish(client, server, {"topic": "orders/1", "type": "end"})).json()

        headers = {**server.auth("svc", "service"), "Last-Event-ID": marker["id"]}
        url = f"{server.url}/api/events?topic=orders/1"
        async with EventStream(client, url, headers=headers) as stream:
            seen = []
            while not seen or seen[-1] != end["id"]:
                seen.append((await stream.next()).id)
        assert seen == [*acknowledged[0], single.json()["id"], end["id"]]  # each event once


async def test_the_framework_s_publish_route_answers_a_replay_as_the_fast_entrance_does(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    """A body without a length is left to the FastAPI route (fast_publish): same answers."""
    headers = {
        **server.auth("svc", "service"),
        "Idempotency-Key": "chunked-1",
        "Content-Type": "application/json",
    }
    body = b'{"topic": "orders/2", "type": "paid", "data": {"n": 1}}'

    async def chunked() -> Any:
        yield body

    url = f"{server.url}/api/events"
    first = await client.post(url, content=chunked(), headers=headers)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers, first.text
    again = await client.post(url, content=chunked(), headers=headers)
    assert again.status_code == 200, again.text
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    fast = await publish(client, server, orjson.loads(body), "chunked-1")
    assert fast.status_code == 200 and fast.json() == first.json()


async def test_keys_are_kept_for_the_configured_retention_then_freed(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(idempotency_retention_seconds=0.5)
    first = await post(client, server, DEMO, "short-lived")
    assert first.status_code == 202, first.text
    published = await publish(client, server, {"topic": "t/1", "type": "x"}, "short-pub")
    assert published.status_code == 202, published.text

    async def fresh_job() -> bool:
        again = await post(client, server, DEMO, "short-lived")
        return again.status_code == 202 and again.json()["id"] != first.json()["id"]

    async def fresh_publish() -> bool:
        again = await publish(client, server, {"topic": "t/1", "type": "x"}, "short-pub")
        return again.status_code == 202 and again.json()["id"] != published.json()["id"]

    await eventually(fresh_job, timeout=10, interval=0.1)  # the key was freed: a new job
    await eventually(fresh_publish, timeout=10, interval=0.1)
