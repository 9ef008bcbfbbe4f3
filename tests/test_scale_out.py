"""Several instances on one Redis: exactly-once delivery across instances and reconnects, a
Redis restart under connected clients, publishers outside jobcast, and the embedded default
refusing a second process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from jobcast.auth import TokenAuthority
from jobcast.errors import Conflict, Unavailable
from jobcast.publisher import AsyncPublisher, Publisher
from jobcast.server.app import Jobcast
from tests.scale_support import Processes, free_port, jobcast_env, processes, wait_for_port
from tests.services import POSTGRES_URL, drop_schema, needs_services, redis_prefix, redis_url
from tests.support import EventStream, LiveServer, eventually, make_settings

TOKENS = TokenAuthority.from_settings(make_settings())


def auth(sub: str = "alice", role: str = "user") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS.mint(sub, role=role)}"}


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from redis_prefix()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with processes(tmp_path) as procs:
        yield procs


async def publish(client: httpx.AsyncClient, base: str, n: int, topic: str = "scale/t") -> str:
    response = await client.post(
        f"{base}/api/events",
        json={"topic": topic, "type": "n", "data": {"n": n}},
        headers=auth("svc", "service"),
    )
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


async def wait_clients(client: httpx.AsyncClient, base: str, count: int) -> None:
    """Until ``base`` holds ``count`` streams (seen from outside, so polled)."""

    async def holds() -> bool:
        return bool((await client.get(f"{base}/health")).json()["connected_clients"] == count)

    await eventually(holds, timeout=10, interval=0.02)


class Subscriber:
    """One client: its stream, the numbers it saw in order, the last id it saw."""

    def __init__(self, client: httpx.AsyncClient, base: str) -> None:
        self.client = client
        self.seen: list[int] = []
        self.ids: list[str] = []
        self.stream: EventStream | None = None
        self.base = base

    async def connect(self, base: str) -> None:
        headers = auth()
        if self.ids:
            headers["Last-Event-ID"] = self.ids[-1]
        self.base = base
        self.stream = EventStream(
            self.client, f"{base}/api/events", params={"topic": "scale/t"}, headers=headers
        )
        await self.stream.__aenter__()

    async def read(self, count: int) -> None:
        assert self.stream is not None
        for event in await self.stream.take(count, timeout=10):
            assert event.event == "n", event
            self.seen.append(orjson.loads(event.data or "null")["n"])
            self.ids.append(event.id or "")

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.__aexit__(None, None, None)
            self.stream = None


@pytest.fixture(params=["redis", "postgres-only"])
def shared_settings(request: pytest.FixtureRequest, prefix: str) -> Iterator[dict[str, str]]:
    """What instances share: a Redis broker, or only a PostgreSQL store (whose database then
    holds the events, the rate limits and the spent tickets too)."""
    if request.param == "redis":
        yield {"broker_url": redis_url(prefix)}
        return
    store_url = f"{POSTGRES_URL}?schema=t{uuid.uuid4().hex[:12]}"
    yield {"store_url": store_url}
    drop_schema(store_url)


@needs_services
async def test_every_event_reaches_every_subscriber_once_across_instances_and_reconnects(
    shared_settings: dict[str, str], procs: Processes
) -> None:
    bases = [procs.serve(f"app{i}", **shared_settings) for i in range(3)]
    async with httpx.AsyncClient(timeout=10) as client:
        subscribers = [Subscriber(client, bases[i % 3]) for i in range(6)]
        for sub in subscribers:
            await sub.connect(sub.base)
        for base in bases:
            await wait_clients(client, base, 2)

        for n in range(30):  # publishers spread over the instances too
            await publish(client, bases[n % 3], n)
        mover = subscribers[0]  # leaves mid-stream and resumes on another instance
        await mover.read(15)
        await mover.close()
        await mover.connect(bases[1])
        await asyncio.gather(*(sub.read(30 - len(sub.seen)) for sub in subscribers))

        procs.stop(procs.started[2], signal.SIGKILL)  # an instance dies with its clients
        for sub in subscribers:
            if sub.base == bases[2]:
                await sub.close()
                await sub.connect(bases[0])
        for n in range(30, 60):
            await publish(client, bases[n % 2], n)
        await asyncio.gather(*(sub.read(30) for sub in subscribers))

        for sub in subscribers:
            assert sub.seen == list(range(60))
            assert sub.ids == subscribers[1].ids  # one order, one id per event, everywhere
            await sub.close()


@pytest.fixture
async def private_redis(procs: Processes, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start (and restart) a redis-server of this test's own; yields ``start(persist)``."""
    port = free_port()
    current: list[subprocess.Popen[bytes]] = []

    def start(*, persist: bool) -> str:
        if current:
            procs.stop(current.pop())
        current.append(procs.redis(port, tmp_path / "redis", persist=persist))
        return f"redis://127.0.0.1:{port}/0"

    yield start
    for process in current:
        procs.stop(process)


@needs_services
@pytest.mark.parametrize("persist", [True, False], ids=["persistent", "empty-after-restart"])
async def test_redis_restarting_under_connected_clients(
    make_server: Callable[..., LiveServer],
    private_redis: Callable[..., str],
    procs: Processes,
    persist: bool,
) -> None:
    url = private_redis(persist=persist)
    server = make_server(broker_url=url, heartbeat_interval=0.2)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        EventStream(
            client, f"{server.url}/api/events", params={"topic": "r"}, headers=auth()
        ) as stream,
    ):
        await wait_clients(client, server.url, 1)
        first = await publish(client, server.url, 1, topic="r")
        assert (await stream.next()).id == first

        procs.stop(procs.started[-1])  # Redis goes away
        # refused, never acknowledged and lost: by the hub, and over HTTP, where the Redis rate
        # limiter in front of publishing and submission answers 503 too (it was a 500)
        with pytest.raises(Unavailable):
            await asyncio.wrap_future(server.run(server.jc.hub.publish("r", "n", {})))
        for path, body in [
            ("/api/events", {"topic": "r", "type": "n", "data": {}}),
            ("/api/jobs", {"kind": "demo"}),
        ]:
            refused = await client.post(f"{server.url}{path}", json=body, headers=auth())
            assert refused.status_code == 503, refused.text
            assert "rate limit" in refused.json()["message"]

        private_redis(persist=persist)
        if persist:  # same history: the same stream carries on
            second = await publish_when_back(client, server.url)
            assert (await stream.next(timeout=10)).id == second
            assert second.rsplit("-", 1)[0] == first.rsplit("-", 1)[0]
            return
        # the history is gone: the stream ends with a retry hint, and the resume says so
        await stream.until_end(timeout=10)
    async with (
        httpx.AsyncClient(timeout=10) as client,
        EventStream(
            client,
            f"{server.url}/api/events",
            params={"topic": "r"},
            headers={**auth(), "Last-Event-ID": first},
        ) as resumed,
    ):
        reset = await resumed.next()
        assert reset.event == "reset", reset
        assert reset.event == "reset"
        assert orjson.loads(reset.data or "null")["reason"] == "history_lost"
        later = await publish(client, server.url, 3, topic="r")
        assert (await resumed.next()).id == later


async def publish_when_back(client: httpx.AsyncClient, base: str) -> str:
    """Publish as soon as the server can reach Redis again (it reconnects with backoff)."""
    async with asyncio.timeout(10):
        while True:
            response = await client.post(
                f"{base}/api/events",
                json={"topic": "r", "type": "n", "data": {"n": 2}},
                headers=auth("svc", "service"),
            )
            if response.status_code != 503:
                assert response.status_code == 202, response.text
                event_id: str = response.json()["id"]
                return event_id
            await asyncio.sleep(0.05)


@needs_services
async def test_publishers_outside_jobcast_reach_subscribers(
    make_server: Callable[..., LiveServer], prefix: str
) -> None:
    server = make_server(broker_url=redis_url(prefix))
    async with (
        httpx.AsyncClient(timeout=10) as client,
        EventStream(
            client, f"{server.url}/api/events", params={"topic": "celery/*"}, headers=auth()
        ) as stream,
    ):
        await wait_clients(client, server.url, 1)
        with Publisher(redis_url(prefix)) as sync_publisher:
            sent = await asyncio.to_thread(
                sync_publisher.publish, "celery/7", "progress", {"pct": 50}
            )
        async with AsyncPublisher(redis_url(prefix)) as async_publisher:
            sent_async = await async_publisher.publish("celery/7", "done", {"ok": True})
        received = await stream.take(2)
        assert [(e.id, e.event) for e in received] == [(sent, "progress"), (sent_async, "done")]


async def test_a_publisher_without_redis_refuses_instead_of_pretending() -> None:
    async with AsyncPublisher("redis://127.0.0.1:1/0") as publisher:
        with pytest.raises(Unavailable):
            await publisher.publish("a", "t", {})


async def test_the_embedded_default_refuses_a_second_process_on_its_data(tmp_path: Path) -> None:
    first = Jobcast(make_settings(data_dir=tmp_path))
    async with first.lifespan():
        second = Jobcast(make_settings(data_dir=tmp_path))
        with pytest.raises(Conflict, match="JOBCAST_BROKER_URL=redis"):
            async with second.lifespan():
                pass


def test_uvicorn_workers_on_the_embedded_default_fail_with_a_clear_message(
    procs: Processes, tmp_path: Path
) -> None:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "jobcast.server.app:create_app", "--factory"]
    args += ["--workers", "2", "--port", str(port)]
    process = procs.spawn(args, jobcast_env(data_dir=tmp_path / "data"), "uvicorn")
    wait_for_port(port, process)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the second worker fails right after the first binds
        if "already used by another jobcast process" in procs.log("uvicorn"):
            break
        time.sleep(0.05)  # polling a log file: there is no event to wait on
    log = procs.log("uvicorn")
    assert "already used by another jobcast process" in log, log
    assert "Scaling out" in log
