"""A `jobcast worker` job's output stream, read live from a server: the worker writes it into
the deployment's Redis (outputs/redis.py) or PostgreSQL (outputs/postgres.py) and the server
serves it. A job that ends because its worker (or its embedded server) was killed still closes
its streams (lifecycle.R6): a live reader sees ``Stream-Closed``, never waits for ever."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobcast.client import AsyncClient
from jobcast.wire import SSEDecoder
from tests.jobs_support import poll_until_done, submit, wait_running
from tests.output_handlers import chunk
from tests.scale_support import Processes, poll_json, processes
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


async def sse_until_closed(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], offset: str = "-1"
) -> str:
    """The text of a stream read live over SSE from ``offset`` until its ``streamClosed``
    control event, reconnecting where it stood when the server ends a connection."""
    received: list[str] = []
    while True:
        params = {"offset": offset, "live": "sse"}
        no_read_timeout = httpx.Timeout(10, read=None)  # the caller's asyncio.timeout bounds it
        async with client.stream(
            "GET", url, params=params, headers=headers, timeout=no_read_timeout
        ) as response:
            assert response.status_code == 200, await response.aread()
            decoder = SSEDecoder()
            async for text in response.aiter_text():
                for event in decoder.feed(text):
                    if event.event == "data":
                        received.append(event.data or "")
                    elif event.event == "control":
                        control = json.loads(event.data or "{}")
                        offset = control.get("streamNextOffset", offset)
                        if control.get("streamClosed"):
                            return "".join(received)


def terminal(job: dict[str, Any]) -> bool:
    return job["state"] in ("succeeded", "failed", "cancelled")


async def test_a_killed_worker_s_jobs_close_their_streams_and_a_retry_continues_them(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """A worker SIGKILLed mid-job: its job that may not run again ends ``Interrupted`` on the
    next worker with its stream closed (lifecycle.R6); the retry-safe one keeps its stream
    open, and its second attempt's writes follow the first's before its end closes it."""
    beat = {"worker_heartbeat_seconds": 1}
    first = procs.worker("first", data_dir=tmp_path / "w1", **beat, **shared)
    server = make_server(**beat, **shared)
    hung = await submit(client, server, "write_then_hang")
    again = await submit(client, server, "write_each_attempt")
    await wait_running(client, server, hung["id"], stage="written")
    await wait_running(client, server, again["id"], stage="attempt 1")
    base = f"{server.url}/v1/stream/jobs"

    async def stored(job_id: str, text: str) -> bool:  # its first write reached the store
        read = await client.get(f"{base}/{job_id}/output", headers=server.auth())
        return read.status_code == 200 and read.text == text

    await eventually(lambda: stored(hung["id"], "before the kill\n"), timeout=10)
    await eventually(lambda: stored(again["id"], "attempt 1\n"), timeout=10)

    async def read_with_the_client() -> str:
        async with AsyncClient(server.url, token=server.token()) as jobcast:
            return "".join([piece async for piece in jobcast.read_stream(again["id"])])

    async with asyncio.timeout(60):  # without R6 the SSE read would wait for ever
        sse = asyncio.create_task(
            sse_until_closed(client, f"{base}/{hung['id']}/output", server.auth())
        )
        long_polls = asyncio.create_task(read_with_the_client())
        procs.stop(first, signal.SIGKILL)  # no goodbye: only the heartbeat stops
        procs.worker("second", data_dir=tmp_path / "w2", **beat, **shared)
        assert await sse == "before the kill\n"
        assert await long_polls == "attempt 1\nattempt 2\n"

    url, auth = f"{server.url}/api/jobs", server.auth()
    failed = await poll_json(client, f"{url}/{hung['id']}", terminal, timeout=30, headers=auth)
    assert failed["state"] == "failed" and failed["error"]["type"] == "Interrupted", failed
    assert [s["closed"] for s in failed["streams"]] == [True]
    ended = await poll_json(client, f"{url}/{again['id']}", terminal, timeout=30, headers=auth)
    assert ended["state"] == "succeeded" and ended["attempts"] == 2, ended
    assert [s["closed"] for s in ended["streams"]] == [True]


async def test_a_job_recovered_as_interrupted_after_a_sigkill_closes_its_stream(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """An embedded server SIGKILLed mid-job: its restart fails the job as ``Interrupted``
    (recovery.C1) and closes its stream, so a reader that resumes there ends."""
    data_dir = tmp_path / "app"
    minting = make_server(data_dir=tmp_path / "tokens")  # the same secret: its tokens do
    auth = minting.auth("alice")
    with processes(tmp_path) as procs:
        base = procs.serve("app", data_dir=data_dir, handlers="tests.output_handlers")
        response = await client.post(
            f"{base}/api/jobs", json={"kind": "write_then_hang", "params": {}}, headers=auth
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        url = f"{base}/v1/stream/jobs/{job_id}/output"

        async def written() -> str | None:
            read = await client.get(url, headers=auth)
            if read.status_code == 200 and read.text:
                return read.headers["stream-next-offset"]
            return None

        offset = await eventually(written, timeout=10)
        procs.stop(procs.started[-1], signal.SIGKILL)

    restarted = make_server(data_dir=data_dir, handlers=["tests.output_handlers"])
    url = f"{restarted.url}/v1/stream/jobs/{job_id}/output"
    async with asyncio.timeout(20):
        assert await sse_until_closed(client, url, auth, offset) == ""
        read = await client.get(url, params={"offset": "-1"}, headers=auth)
        assert read.text == "before the kill\n" and read.headers["stream-closed"] == "true"
    job = (await client.get(f"{restarted.url}/api/jobs/{job_id}", headers=auth)).json()
    assert job["state"] == "failed" and job["error"]["type"] == "Interrupted", job


async def test_a_job_cancelled_while_its_retry_waits_closes_its_stream(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    """A cancel ends a queued job without a run (lifecycle.R6's ``after_terminal`` case): the
    stream its failed attempt wrote is closed too."""
    server = make_server(handlers=["tests.output_handlers"])
    job = await submit(client, server, "write_then_fail")
    url, auth = f"{server.url}/api/jobs/{job['id']}", server.auth()
    await poll_json(client, url, lambda j: j["next_attempt_at"] is not None, headers=auth)
    stream = f"{server.url}/v1/stream/jobs/{job['id']}/output"
    await eventually(lambda: _has(client, stream, auth, "attempt 1\n"), timeout=10)
    async with asyncio.timeout(20):
        reading = asyncio.create_task(sse_until_closed(client, stream, auth))
        cancelled = await client.post(f"{url}/cancel", headers=auth)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert await reading == "attempt 1\n"


async def _has(client: httpx.AsyncClient, url: str, auth: dict[str, str], text: str) -> bool:
    read = await client.get(url, headers=auth)
    return read.status_code == 200 and read.text == text
