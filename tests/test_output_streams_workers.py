"""A `jobcast worker` job's output stream, read live from a server: the worker writes it into
the deployment's Redis (outputs/redis.py) or PostgreSQL (outputs/postgres.py) and the server
serves it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobcast.wire import SSEDecoder
from tests.jobs_support import poll_until_done, submit
from tests.output_handlers import chunk
from tests.scale_support import Processes, processes
from tests.services import (
    POSTGRES_URL,
    REDIS_URL,
    drop_schema,
    needs_services,
    redis_prefix,
    unique_prefix,
)
from tests.services import redis_url as broker_url
from tests.support import LiveServer, eventually

pytestmark = needs_services


@pytest.fixture(params=["redis", "postgres"])
def shared(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.param == "postgres":  # PostgreSQL only: store, broker, queue and streams
        store_url = f"{POSTGRES_URL}?schema=o_{unique_prefix()[-12:]}"
        yield {"store_url": store_url, "queue_url": store_url, "handlers": "tests.output_handlers"}
        drop_schema(store_url)
        return
    for prefix in redis_prefix():
        store_url = f"{POSTGRES_URL}?schema=o_{prefix[-12:]}"
        yield {
            "broker_url": broker_url(prefix),
            "queue_url": f"{REDIS_URL}?queue={prefix}",
            "store_url": store_url,
            "handlers": "tests.output_handlers",
        }
        drop_schema(store_url)
        from tests.services import delete_prefix

        delete_prefix(f"saq:{prefix}")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with processes(tmp_path) as procs:
        yield procs


async def test_a_worker_job_s_output_is_served_live_by_the_server(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    procs.worker("worker", data_dir=tmp_path / "worker", **shared)
    server = make_server(**shared)
    job = await submit(client, server, "write_chunks", {"n": 3000, "every": 300, "pause": 0.02})
    url = f"{server.url}/v1/stream/jobs/{job['id']}/output"

    async def opened() -> bool:
        return (await client.head(url, headers=server.auth())).status_code == 200

    await eventually(opened, timeout=20)
    received: list[str] = []
    async with asyncio.timeout(30):
        params = {"offset": "-1", "live": "sse"}
        async with client.stream("GET", url, params=params, headers=server.auth()) as response:
            decoder, closed = SSEDecoder(), False
            async for text in response.aiter_text():
                for event in decoder.feed(text):
                    if event.event == "data":
                        received.append(event.data or "")
                    elif event.event == "control":
                        closed = json.loads(event.data or "{}").get("streamClosed", False)
                if closed:
                    break
    assert "".join(received) == "".join(chunk(i) for i in range(3000))
    snapshot = (await poll_until_done(client, server, job["id"]))[-1]
    assert snapshot["state"] == "succeeded"
    assert snapshot["streams"][0]["closed"] is True


async def test_instances_on_postgresql_serve_one_another_s_streams_live(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    store_url = f"{POSTGRES_URL}?schema=o_{unique_prefix()[-12:]}"
    pg_only = {"store_url": store_url, "queue_url": store_url, "public_stream_prefixes": ["open/"]}
    one, other = make_server(**pg_only), make_server(**pg_only)
    try:
        text_plain = {"Content-Type": "text/plain"}
        created = await client.put(
            f"{one.url}/v1/stream/open/log", content=b"a", headers=text_plain
        )
        assert created.status_code == 201
        offset = created.headers["stream-next-offset"]
        url = f"{other.url}/v1/stream/open/log"
        received = []
        async with (
            asyncio.timeout(10),
            client.stream("GET", url, params={"offset": offset, "live": "sse"}) as response,
        ):
            decoder = SSEDecoder()
            async for text in response.aiter_text():
                for event in decoder.feed(text):
                    if event.event == "control" and not received:  # up to date: now waiting
                        appended = await client.post(
                            f"{one.url}/v1/stream/open/log", content=b"b", headers=text_plain
                        )
                        assert appended.status_code == 204
                        received.append("")
                    elif event.event == "data":
                        received.append(event.data or "")
                if "b" in received:
                    break
        assert received == ["", "b"]  # woken by the other instance's NOTIFY
        # Deleted on one and made again: the other answers 410 for the old offset.
        assert (await client.delete(f"{one.url}/v1/stream/open/log")).status_code == 204
        again = await client.put(f"{one.url}/v1/stream/open/log", headers=text_plain)
        assert again.status_code == 201
        assert (await client.get(url, params={"offset": offset})).status_code == 410
    finally:
        one.stop()
        other.stop()
        await asyncio.to_thread(drop_schema, store_url)
