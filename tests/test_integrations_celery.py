"""Celery tasks as jobcast jobs: real `celery worker` subprocesses (prefork and threads) on
RabbitMQ with a Redis result backend, reporting through the shared Redis broker and a
PostgreSQL store to a real jobcast server, watched as a user would (the job's API and stream).

The test process is the sender: ``tests.celery_app`` tracks its app here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.jobs_support import watch
from tests.output_support import CAP, CHUNKS, assert_task_outputs, read_output, written
from tests.scale_support import Processes, TcpProxy, free_port, jobcast_env, processes
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

PREFIX = unique_prefix()
STORE = f"{POSTGRES_URL}?schema=c_{PREFIX[-12:]}"
PG_PORT = 5432
ENV = {
    "JOBCAST_TEST_CELERY_REDIS": REDIS_URL,
    "JOBCAST_TEST_CELERY_PREFIX": PREFIX,
    "JOBCAST_TEST_CELERY_JOBCAST": f"{REDIS_URL}?prefix={PREFIX}",
    "JOBCAST_TEST_CELERY_STORE": STORE,
}


@pytest.fixture(scope="module")
def tasks() -> Iterator[ModuleType]:
    """``tests.celery_app``, configured for this module's broker prefix and store."""
    os.environ.update(ENV)
    import tests.celery_app as tasks

    yield tasks
    drop_schema(STORE)
    delete_prefix(PREFIX)


@pytest.fixture
def queue(tasks: ModuleType) -> Iterator[str]:
    """A queue of this test's own, deleted afterwards (with what a test left in it)."""
    name = f"{PREFIX}-{uuid.uuid4().hex[:8]}"
    yield name
    with tasks.app.connection_for_write() as conn:
        conn.default_channel.queue_delete(name)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with processes(tmp_path) as procs:
        yield procs
        # Workers end with their pool at once: a warm shutdown waits for the tasks a test
        # left waiting, and nothing here is about shutting down.
        for process in procs.started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # not a session of its own
                    os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def server(make_server: Callable[..., LiveServer], tasks: ModuleType) -> LiveServer:
    return make_server(
        broker_url=f"{REDIS_URL}?prefix={PREFIX}",
        store_url=STORE,
        celery_app="tests.celery_app:app",
        heartbeat_interval=0.5,
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def start_worker(
    procs: Processes, queue: str, pool: str, name: str, *, store: str = STORE, **env: str
) -> subprocess.Popen[bytes]:
    """A `celery worker` in a session of its own (so SIGKILL can take its whole pool)."""
    environ = jobcast_env()
    environ.update(ENV, JOBCAST_TEST_CELERY_STORE=store, **env)
    environ["C_FORCE_ROOT"] = "1"  # CI containers run as root; one task takes pickle (V1)
    args = [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker"]
    args += ["-P", pool, "-c", "2", "-Q", queue, "-n", f"{name}-{queue}@%h", "-l", "info"]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return procs.spawn(args, environ, name, session=True)


async def job(client: httpx.AsyncClient, server: LiveServer, job_id: str, **auth: Any) -> Any:
    response = await client.get(f"{server.url}/api/jobs/{job_id}", headers=server.auth(**auth))
    assert response.status_code == 200, response.text
    return response.json()


async def gate_running(tasks: ModuleType, name: str) -> int:
    pid: int = await asyncio.to_thread(tasks.running_pid, name)
    return pid


@pytest.mark.parametrize("pool", ["prefork", "threads"])
async def test_a_tracked_task_is_a_job_from_queued_to_its_end(
    tasks: ModuleType,
    queue: str,
    procs: Processes,
    server: LiveServer,
    client: httpx.AsyncClient,
    pool: str,
) -> None:
    from jobcast.integrations.celery import jobcast_headers

    sent = tasks.count.apply_async((20,), queue=queue, headers=jobcast_headers("alice"))
    queued = await job(client, server, sent.id)  # stored before apply_async returned
    assert queued["state"] == "queued" and queued["owner"] == "alice"
    assert queued["kind"] == "tests.celery_app.count"
    assert queued["params"] == {"args": [20], "kwargs": {}}
    other = await client.get(f"{server.url}/api/jobs/{sent.id}", headers=server.auth("bob"))
    assert other.status_code in (403, 404)

    start_worker(procs, queue, pool, "w1")
    events = await watch(client, server, sent.id, timeout=30)
    types = [t for t, _ in events]
    assert types[0] == "snapshot" and types[-1] == "succeeded", types
    assert "progress" in types and ("state", "running") in [(t, d.get("state")) for t, d in events]
    final = events[-1][1]
    assert final["result"] == {"steps": 20} and final["progress"] == 100.0
    assert final["attempts"] == 1 and final["owner"] == "alice"
    assert await asyncio.to_thread(sent.get, timeout=10) == {"steps": 20}

    # Retries: the job stays live, each retry visible with its error; one terminal event.
    retried = tasks.flaky.apply_async(
        (f"flaky-{pool}", 2), queue=queue, headers=jobcast_headers("alice")
    )
    events = await watch(client, server, retried.id, timeout=30)
    retries = [d for t, d in events if t == "retrying"]
    assert [r["last_error"]["type"] for r in retries] == ["OSError", "OSError"][: len(retries)]
    assert [t for t, _ in events].count("succeeded") == 1
    final = events[-1][1]
    assert events[-1][0] == "succeeded" and final["attempts"] == 3 and final["result"] == "ok"
    assert final["error"] is None

    # A failure: the type and message, no traceback and no local value.
    failed = tasks.broken.apply_async(queue=queue, headers=jobcast_headers("alice"))
    assert (await job(client, server, failed.id))["params"] == {"args": [], "kwargs": {}}
    events = await watch(client, server, failed.id, timeout=30)
    assert events[-1][0] == "failed"
    assert events[-1][1]["error"] == {"type": "ValueError", "message": "bad input (length 7)"}
    assert "hunter2" not in str(events)

    # Not JSON: the arguments as a flagged repr, the result as a string.
    opaque = tasks.opaque.apply_async((tasks.Opaque(5),), queue=queue)
    admin = server.auth("root", "admin")
    events = await watch(client, server, opaque.id, headers=admin, timeout=30)
    final = events[-1][1]
    assert events[-1][0] == "succeeded" and final["result"] == "{5}"
    assert final["params"] == {"repr": "((Opaque(5),), {})", "not_json": True}
    # Sent with no owner: the service subject's, which an admin reads and a user does not.
    assert final["owner"] == "service:celery"
    assert (await job(client, server, opaque.id, sub="root", role="admin"))["state"] == "succeeded"
    stranger = await client.get(f"{server.url}/api/jobs/{opaque.id}", headers=server.auth("bob"))
    assert stranger.status_code in (403, 404)


async def test_a_tracked_task_writes_output_streams(
    tasks: ModuleType,
    queue: str,
    procs: Processes,
    server: LiveServer,
    client: httpx.AsyncClient,
) -> None:
    from jobcast.integrations.celery import jobcast_headers

    start_worker(procs, queue, "prefork", "w1", JOBCAST_MAX_STREAM_BYTES=str(CAP))
    headers = jobcast_headers("alice")
    written = tasks.write_lines.apply_async((CHUNKS,), queue=queue, headers=headers)
    failed = tasks.write_then_fail.apply_async((20,), queue=queue, headers=headers)
    too_much = tasks.write_too_much.apply_async((CAP,), queue=queue, headers=headers)
    events = await watch(client, server, written.id, timeout=30)
    assert events[-1][0] == "succeeded" and events[-1][1]["result"] == CHUNKS
    events = await watch(client, server, failed.id, timeout=30)
    assert events[-1][0] == "failed" and events[-1][1]["error"]["type"] == "RuntimeError"
    events = await watch(client, server, too_much.id, timeout=30)
    assert events[-1][0] == "failed"
    error = events[-1][1]["error"]
    assert error["type"] == "PayloadTooLarge" and f"the limit is {CAP}" in error["message"]
    await assert_task_outputs(client, server, written.id, failed.id, too_much.id)

    # A retried task's streams stay open: each attempt (maybe in another pool process)
    # appends to them, and they close at its final end.
    retried = tasks.write_and_retry.apply_async(("retried-writer", 2), queue=queue, headers=headers)
    events = await watch(client, server, retried.id, timeout=30)
    assert events[-1][0] == "succeeded" and events[-1][1]["attempts"] == 3
    data, closed = await read_output(client, server, retried.id)
    assert data == b"attempt 1\nattempt 2\nattempt 3\n" and closed


@pytest.mark.parametrize("pool", ["prefork", "threads"])
async def test_cancelling_a_tracked_task_revokes_it(
    tasks: ModuleType,
    queue: str,
    procs: Processes,
    server: LiveServer,
    client: httpx.AsyncClient,
    pool: str,
) -> None:
    from jobcast.integrations.celery import jobcast_headers

    headers = jobcast_headers("alice")
    # Never started (no worker yet): cancelled at once, and the worker drops it later.
    waiting = tasks.gate.apply_async(("never",), queue=queue, headers=headers)
    cancelled = await client.post(
        f"{server.url}/api/jobs/{waiting.id}/cancel", headers=server.auth()
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"

    start_worker(procs, queue, pool, "w1")
    running = tasks.gate.apply_async(("running",), queue=queue, headers=headers)
    await gate_running(tasks, "running")
    response = await client.post(
        f"{server.url}/api/jobs/{running.id}/cancel", headers=server.auth()
    )
    assert response.status_code == 200, response.text
    events = await watch(client, server, running.id, timeout=30)
    assert events[-1][0] == "cancelled", events[-1]
    final = await job(client, server, waiting.id)
    assert final["state"] == "cancelled" and final["attempts"] == 0  # it never ran


@pytest.mark.parametrize("pool", ["prefork", "threads"])
async def test_a_revoked_task_s_output_streams_are_closed(
    tasks: ModuleType,
    queue: str,
    procs: Processes,
    server: LiveServer,
    client: httpx.AsyncClient,
    pool: str,
) -> None:
    """Prefork: the revoke terminates the pool child that wrote the stream, and the main
    process closes it; threads: the task stops at its next ``progress``, in the process that
    wrote it (``_stream_writer.T5``)."""
    from jobcast.integrations.celery import jobcast_headers

    start_worker(procs, queue, pool, "w1")
    name = f"writing-{pool}"
    sent = tasks.gate_writing.apply_async((name,), queue=queue, headers=jobcast_headers("alice"))
    await gate_running(tasks, name)
    await eventually(lambda: written(client, server, sent.id, b"started\n"), timeout=20)
    response = await client.post(f"{server.url}/api/jobs/{sent.id}/cancel", headers=server.auth())
    assert response.status_code == 200, response.text
    events = await watch(client, server, sent.id, timeout=30)
    assert events[-1][0] == "cancelled", events[-1]
    data, closed = await read_output(client, server, sent.id)
    assert re.fullmatch(rb"started\n(waiting\n)*", data) and closed


async def test_a_store_outage_during_a_task_never_fails_it(
    tasks: ModuleType,
    queue: str,
    procs: Processes,
    server: LiveServer,
    client: httpx.AsyncClient,
) -> None:
    from jobcast.integrations.celery import jobcast_headers

    proxy = TcpProxy(PG_PORT).start()
    try:
        through_proxy = STORE.replace("127.0.0.1/", f"127.0.0.1:{proxy.port}/")
        start_worker(procs, queue, "threads", "w1", store=through_proxy)
        sent = tasks.gate.apply_async(("outage",), queue=queue, headers=jobcast_headers("alice"))
        await gate_running(tasks, "outage")
        proxy.cut()  # the store is gone while the task runs and ends
        await asyncio.to_thread(tasks.release, "outage")
        assert await asyncio.to_thread(sent.get, timeout=20) == "released"  # the task succeeded
        events = await watch(client, server, sent.id, timeout=20)  # the broker still carries it
        assert events[-1][0] == "succeeded"
        proxy.resume()  # the terminal state is retried until it is stored

        async def stored() -> bool:
            return bool((await job(client, server, sent.id))["state"] == "succeeded")

        await eventually(stored, timeout=20, interval=0.1)
    finally:
        proxy.stop()


async def test_a_worker_killed_mid_task_leaves_no_job_running(
    tasks: ModuleType,
    queue: str,
    procs: Processes,
    server: LiveServer,
    client: httpx.AsyncClient,
) -> None:
    from jobcast.integrations.celery import jobcast_headers

    fast = {"JOBCAST_TEST_CELERY_HEARTBEAT": "1"}
    doomed = start_worker(procs, queue, "prefork", "w1", **fast)
    sent = tasks.gate.apply_async(("killed",), queue=queue, headers=jobcast_headers("alice"))
    await gate_running(tasks, "killed")
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its pool, mid-task
    doomed.wait(10)
    start_worker(procs, queue, "prefork", "w2", **fast)  # sweeps once a heartbeat
    events = await watch(client, server, sent.id, timeout=30)
    assert events[-1][0] == "failed"
    assert events[-1][1]["error"]["type"] == "Interrupted"


async def test_a_late_acked_task_of_a_killed_worker_goes_on_elsewhere(
    tasks: ModuleType,
    queue: str,
    procs: Processes,
    server: LiveServer,
    client: httpx.AsyncClient,
) -> None:
    from jobcast.integrations.celery import jobcast_headers

    doomed = start_worker(procs, queue, "prefork", "w1")
    sent = tasks.gate_late.apply_async(("late",), queue=queue, headers=jobcast_headers("alice"))
    await gate_running(tasks, "late")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(10)
    start_worker(procs, queue, "prefork", "w2")  # RabbitMQ re-delivers the unacked task
    await gate_running(tasks, "late")
    await asyncio.to_thread(tasks.release, "late")
    events = await watch(client, server, sent.id, timeout=30)
    assert events[-1][0] == "succeeded"
    assert events[-1][1]["attempts"] == 2


async def test_a_pool_process_killed_mid_task_fails_its_job_at_once(
    tasks: ModuleType,
    queue: str,
    procs: Processes,
    server: LiveServer,
    client: httpx.AsyncClient,
) -> None:
    from jobcast.integrations.celery import jobcast_headers

    start_worker(procs, queue, "prefork", "w1")
    sent = tasks.gate.apply_async(("child",), queue=queue, headers=jobcast_headers("alice"))
    child = await gate_running(tasks, "child")
    os.kill(child, signal.SIGKILL)  # the worker lives on and reports WorkerLostError
    events = await watch(client, server, sent.id, timeout=30)
    assert events[-1][0] == "failed"
    assert events[-1][1]["error"]["type"] == "Interrupted"


async def test_a_broker_outage_during_a_task_never_fails_it(
    tasks: ModuleType,
    queue: str,
    procs: Processes,
    make_server: Callable[..., LiveServer],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """jobcast's Redis (a private redis-server) restarts while a task runs: the task
    succeeds, its progress meanwhile is dropped and counted, its end is published and stored
    once Redis is back."""
    from jobcast.integrations.celery import jobcast_headers

    port = free_port()
    redis_server = procs.redis(port, tmp_path / "redis", persist=True)
    broker = f"redis://127.0.0.1:{port}/0?prefix={PREFIX}"
    server = make_server(
        broker_url=broker, store_url=STORE, heartbeat_interval=0.5, metrics_snapshot_seconds=0.5
    )
    start_worker(
        procs,
        queue,
        "threads",
        "w1",
        JOBCAST_TEST_CELERY_JOBCAST=broker,
        JOBCAST_METRICS_SNAPSHOT_SECONDS="0.5",
    )
    sent = tasks.gate_writing.apply_async(
        ("redis-down",), queue=queue, headers=jobcast_headers("alice")
    )
    await gate_running(tasks, "redis-down")
    procs.stop(redis_server)  # SIGTERM: it writes its append-only file, as a restart would
    await eventually(lambda: "could not publish progress" in procs.log("w1"), timeout=20)
    await asyncio.to_thread(tasks.release, "redis-down")
    procs.redis(port, tmp_path / "redis", persist=True)  # back, on the same port
    assert await asyncio.to_thread(sent.get, timeout=20) == "released"  # the task succeeded

    async def stored() -> bool:
        return bool((await job(client, server, sent.id))["state"] == "succeeded")

    await eventually(stored, timeout=20, interval=0.1)
    events = await watch(client, server, sent.id, timeout=20)
    assert events[-1][0] == "succeeded" and events[-1][1]["result"] == "released"
    # Its output written while Redis was down was kept and retried: all of it, once, in order.
    data, closed = await read_output(client, server, sent.id)
    assert re.fullmatch(rb"started\n(waiting\n)+released\n", data) and closed

    async def dropped() -> float:  # the worker's count, shared through Redis
        text = (await client.get(f"{server.url}/metrics")).text
        prefix = 'jobcast_integration_progress_reports_total{outcome="dropped"'
        return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(prefix))

    assert await eventually(dropped, timeout=20, interval=0.2) > 0
