"""RQ jobs as jobcast jobs: real `rq worker` subprocesses (jobcast's worker and job classes) on
Redis, reporting through the shared Redis broker and a PostgreSQL store to a real jobcast
server, watched as a user would. The test process is the sender (a ``TrackedQueue``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from rq import Retry

from jobcast.client import AsyncClient
from jobcast.integrations.rq import TrackedQueue, jobcast_meta
from tests import rq_tasks
from tests.jobs_support import watch
from tests.output_support import CAP, CHUNKS, assert_task_outputs, read_output, written
from tests.scale_support import Processes, jobcast_env, processes
from tests.services import (
    POSTGRES_URL,
    REDIS_URL,
    delete_prefix,
    drop_schema,
    needs_services,
    unique_prefix,
)
from tests.support import LiveServer, eventually

pytestmark = [needs_services, pytest.mark.timeout(120)]


@pytest.fixture
def shared() -> Iterator[dict[str, str]]:
    prefix = unique_prefix()
    store = f"{POSTGRES_URL}?schema=r_{prefix[-12:]}"
    yield {"prefix": prefix, "broker_url": f"{REDIS_URL}?prefix={prefix}", "store_url": store}
    drop_schema(store)
    delete_prefix(prefix)


@pytest.fixture
def queue(shared: dict[str, str]) -> Iterator[TrackedQueue]:
    connection = redis.Redis.from_url(REDIS_URL)
    name = f"{shared['prefix']}-{uuid.uuid4().hex[:8]}"
    yield TrackedQueue(
        name, connection=connection, jobcast=shared["broker_url"], store=shared["store_url"]
    )
    for key in connection.scan_iter(match=f"rq:*{name}*"):
        connection.delete(key)
    connection.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with processes(tmp_path) as procs:
        yield procs
        for process in procs.started:  # nothing here is about shutting down (see Celery's)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def server(make_server: Callable[..., LiveServer], shared: dict[str, str]) -> LiveServer:
    return make_server(
        broker_url=shared["broker_url"],
        store_url=shared["store_url"],
        rq_redis_url=REDIS_URL,
        heartbeat_interval=0.5,
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def start_worker(
    procs: Processes, queue: TrackedQueue, shared: dict[str, str], name: str, **settings: Any
) -> subprocess.Popen[bytes]:
    env = jobcast_env(broker_url=shared["broker_url"], store_url=shared["store_url"], **settings)
    env["JOBCAST_TEST_RQ_REDIS"] = REDIS_URL
    env["JOBCAST_TEST_RQ_PREFIX"] = shared["prefix"]
    args = [sys.executable, "-m", "rq.cli", "worker", "-u", REDIS_URL, "-n", f"{name}-{queue.name}"]
    args += [
        "-w",
        "jobcast.integrations.rq.TrackedWorker",
        "-j",
        "jobcast.integrations.rq.TrackedJob",
    ]
    args += [queue.name]
    return procs.spawn(args, env, name, session=True)


async def job(client: httpx.AsyncClient, server: LiveServer, job_id: str, **auth: Any) -> Any:
    response = await client.get(f"{server.url}/api/jobs/{job_id}", headers=server.auth(**auth))
    assert response.status_code == 200, response.text
    return response.json()


async def test_an_rq_job_is_a_job_from_queued_to_its_end(
    queue: TrackedQueue,
    shared: dict[str, str],
    procs: Processes,
    server: LiveServer,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rq_tasks, "PREFIX", shared["prefix"])
    meta = jobcast_meta("alice")
    sent = queue.enqueue(rq_tasks.count, 20, meta=meta, failure_ttl=60)
    queued = await job(client, server, sent.id)
    assert queued["state"] == "queued" and queued["owner"] == "alice"
    assert queued["kind"] == "tests.rq_tasks.count"
    assert queued["params"] == {"args": [20], "kwargs": {}}

    start_worker(procs, queue, shared, "w1")
    events = await watch(client, server, sent.id, timeout=30)
    types = [t for t, _ in events]
    assert types[0] == "snapshot" and types[-1] == "succeeded" and "progress" in types, types
    assert events[-1][1]["result"] == {"steps": 20} and events[-1][1]["attempts"] == 1
    assert events[-1][1]["metadata"] == {"counted": 20}  # coalesced, final in the snapshot

    retried = queue.enqueue(
        rq_tasks.flaky, "flaky", 1, meta=meta, retry=Retry(max=2), failure_ttl=60
    )
    events = await watch(client, server, retried.id, timeout=30)
    retries = [d for t, d in events if t == "retrying"]
    assert [r["last_error"]["type"] for r in retries][-1:] == ["OSError"]
    assert events[-1][0] == "succeeded" and events[-1][1]["attempts"] == 2

    failed = queue.enqueue(rq_tasks.broken, meta=meta, failure_ttl=60)
    events = await watch(client, server, failed.id, timeout=30)
    assert events[-1][0] == "failed"
    assert events[-1][1]["error"] == {"type": "ValueError", "message": "bad input (length 7)"}
    assert "hunter2" not in str(events)

    opaque = queue.enqueue(rq_tasks.opaque, rq_tasks.Opaque(5), failure_ttl=60)  # no owner
    admin = server.auth("root", "admin")
    events = await watch(client, server, opaque.id, headers=admin, timeout=30)
    final = events[-1][1]
    assert events[-1][0] == "succeeded" and final["result"] == "{5}"
    assert final["params"] == {"repr": "((Opaque(5),), {})", "not_json": True}
    assert final["owner"] == "service:rq"


async def test_an_rq_job_writes_output_streams(
    queue: TrackedQueue,
    shared: dict[str, str],
    procs: Processes,
    server: LiveServer,
    client: httpx.AsyncClient,
) -> None:
    start_worker(procs, queue, shared, "w1", max_stream_bytes=CAP)
    meta = jobcast_meta("alice")
    written = queue.enqueue(rq_tasks.write_lines, CHUNKS, meta=meta, failure_ttl=60)
    failed = queue.enqueue(rq_tasks.write_then_fail, 20, meta=meta, failure_ttl=60)
    too_much = queue.enqueue(rq_tasks.write_too_much, CAP, meta=meta, failure_ttl=60)
    events = await watch(client, server, written.id, timeout=30)
    assert events[-1][0] == "succeeded" and events[-1][1]["result"] == CHUNKS
    events = await watch(client, server, failed.id, timeout=30)
    assert events[-1][0] == "failed" and events[-1][1]["error"]["type"] == "RuntimeError"
    events = await watch(client, server, too_much.id, timeout=30)
    assert events[-1][0] == "failed"
    error = events[-1][1]["error"]
    assert error["type"] == "PayloadTooLarge" and f"the limit is {CAP}" in error["message"]
    await assert_task_outputs(client, server, written.id, failed.id, too_much.id)


async def test_cancelling_an_rq_job_cancels_or_stops_it(
    queue: TrackedQueue,
    shared: dict[str, str],
    procs: Processes,
    server: LiveServer,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rq_tasks, "PREFIX", shared["prefix"])
    meta = jobcast_meta("alice")
    waiting = queue.enqueue(rq_tasks.gate, "never", meta=meta, failure_ttl=60)
    cancelled = await client.post(
        f"{server.url}/api/jobs/{waiting.id}/cancel", headers=server.auth()
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"

    start_worker(procs, queue, shared, "w1")
    running = queue.enqueue(rq_tasks.gate, "running", meta=meta, failure_ttl=60)
    await asyncio.to_thread(rq_tasks.running_pid, "running")
    response = await client.post(
        f"{server.url}/api/jobs/{running.id}/cancel", headers=server.auth()
    )
    assert response.status_code == 200, response.text
    events = await watch(client, server, running.id, timeout=30)
    assert events[-1][0] == "cancelled", events[-1]


async def test_a_stopped_rq_job_s_output_streams_are_closed(
    queue: TrackedQueue,
    shared: dict[str, str],
    procs: Processes,
    server: LiveServer,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stop kills the work horse that wrote the stream; the worker closes it when it
    reports the job cancelled (``_stream_writer.T5``)."""
    monkeypatch.setattr(rq_tasks, "PREFIX", shared["prefix"])
    start_worker(procs, queue, shared, "w1")
    sent = queue.enqueue(rq_tasks.gate_writing, "writing", meta=jobcast_meta("alice"))
    await asyncio.to_thread(rq_tasks.running_pid, "writing")
    await eventually(lambda: written(client, server, sent.id, b"started\n"), timeout=20)
    response = await client.post(f"{server.url}/api/jobs/{sent.id}/cancel", headers=server.auth())
    assert response.status_code == 200, response.text
    events = await watch(client, server, sent.id, timeout=30)
    assert events[-1][0] == "cancelled", events[-1]
    data, closed = await read_output(client, server, sent.id)
    assert data == b"started\n" and closed


async def test_a_killed_rq_worker_leaves_no_job_running(
    queue: TrackedQueue,
    shared: dict[str, str],
    procs: Processes,
    server: LiveServer,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rq_tasks, "PREFIX", shared["prefix"])
    doomed = start_worker(procs, queue, shared, "w1", worker_heartbeat_seconds=1)
    sent = queue.enqueue(rq_tasks.gate, "killed", meta=jobcast_meta("alice"), failure_ttl=60)
    horse = await asyncio.to_thread(rq_tasks.running_pid, "killed")
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker, mid-job,
    os.kill(horse, signal.SIGKILL)  # and its work horse (a session of its own)
    doomed.wait(10)
    start_worker(procs, queue, shared, "w2", worker_heartbeat_seconds=1)
    events = await watch(client, server, sent.id, timeout=30)
    assert events[-1][0] == "failed"
    assert events[-1][1]["error"]["type"] == "Interrupted"


async def test_a_killed_rq_worker_s_output_stream_is_closed_for_its_reader(
    queue: TrackedQueue,
    shared: dict[str, str],
    procs: Processes,
    server: LiveServer,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker and the work horse that wrote the stream are SIGKILLed: nobody reports the
    task's end. The next worker's sweep fails the job and closes the stream (reported.R6),
    so a reader waiting at its tail ends with what was written."""
    monkeypatch.setattr(rq_tasks, "PREFIX", shared["prefix"])
    doomed = start_worker(procs, queue, shared, "w1", worker_heartbeat_seconds=1)
    sent = queue.enqueue(rq_tasks.gate_writing, "writing", meta=jobcast_meta("alice"))
    horse = await asyncio.to_thread(rq_tasks.running_pid, "writing")
    await eventually(lambda: written(client, server, sent.id, b"started\n"), timeout=20)
    async with AsyncClient(server.url, token=server.token()) as jobcast:
        reading = jobcast.read_stream(sent.id)  # live: waits at the tail until the stream ends
        async with asyncio.timeout(60):
            first = await anext(aiter(reading))
            os.killpg(doomed.pid, signal.SIGKILL)  # the worker, mid-job,
            os.kill(horse, signal.SIGKILL)  # and its work horse (a session of its own)
            await asyncio.to_thread(doomed.wait, 10)
            start_worker(procs, queue, shared, "w2", worker_heartbeat_seconds=1)
            rest = [piece async for piece in reading]
    assert first + "".join(rest) == "started\n"
    assert await read_output(client, server, sent.id) == (b"started\n", True)
    events = await watch(client, server, sent.id, timeout=30)
    assert events[-1][0] == "failed" and events[-1][1]["error"]["type"] == "Interrupted"
