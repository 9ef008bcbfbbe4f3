"""Dramatiq messages as jobcast jobs: real `dramatiq` worker subprocesses on Redis with
jobcast's middleware, reporting through the shared Redis broker and a PostgreSQL store to a
real jobcast server, watched as a user would. The test process is the sender."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.jobs_support import watch
from tests.output_support import CAP, CHUNKS, assert_task_outputs
from tests.scale_support import Processes, jobcast_env, processes
from tests.services import (
    POSTGRES_URL,
    REDIS_URL,
    delete_prefix,
    drop_schema,
    needs_services,
    unique_prefix,
)
from tests.support import LiveServer

pytestmark = [needs_services, pytest.mark.timeout(120)]

PREFIX = unique_prefix()
STORE = f"{POSTGRES_URL}?schema=d_{PREFIX[-12:]}"
ENV = {
    "JOBCAST_TEST_DRAMATIQ_REDIS": REDIS_URL,
    "JOBCAST_TEST_DRAMATIQ_PREFIX": PREFIX,
    "JOBCAST_TEST_DRAMATIQ_JOBCAST": f"{REDIS_URL}?prefix={PREFIX}",
    "JOBCAST_TEST_DRAMATIQ_STORE": STORE,
}


@pytest.fixture(scope="module")
def actors() -> Iterator[ModuleType]:
    os.environ.update(ENV)
    import tests.dramatiq_app as actors

    yield actors
    drop_schema(STORE)
    delete_prefix(PREFIX)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with processes(tmp_path) as procs:
        yield procs
        for process in procs.started:  # nothing here is about shutting down (see Celery's)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def server(make_server: Callable[..., LiveServer], actors: ModuleType) -> LiveServer:
    return make_server(
        broker_url=f"{REDIS_URL}?prefix={PREFIX}", store_url=STORE, heartbeat_interval=0.5
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def start_worker(procs: Processes, name: str, **extra: str) -> subprocess.Popen[bytes]:
    env = jobcast_env()
    env.update(ENV, **extra)
    args = [sys.executable, "-m", "dramatiq", "tests.dramatiq_app", "-p", "1", "-t", "2"]
    return procs.spawn(args, env, name, session=True)


async def job(client: httpx.AsyncClient, server: LiveServer, job_id: str) -> Any:
    response = await client.get(f"{server.url}/api/jobs/{job_id}", headers=server.auth())
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_dramatiq_message_is_a_job_from_queued_to_its_end(
    actors: ModuleType, procs: Processes, server: LiveServer, client: httpx.AsyncClient
) -> None:
    sent = actors.count.send_with_options(args=(20,), jobcast_owner="alice")
    queued = await job(client, server, sent.message_id)
    assert queued["state"] == "queued" and queued["owner"] == "alice"
    assert queued["kind"] == "count" and queued["params"] == {"args": [20], "kwargs": {}}

    start_worker(procs, "w1")
    events = await watch(client, server, sent.message_id, timeout=30)
    types = [t for t, _ in events]
    assert types[0] == "snapshot" and types[-1] == "succeeded" and "progress" in types, types
    assert events[-1][1]["result"] == {"steps": 20} and events[-1][1]["attempts"] == 1

    retried = actors.flaky.send_with_options(args=("flaky", 1), jobcast_owner="alice")
    events = await watch(client, server, retried.message_id, timeout=30)
    retries = [d for t, d in events if t == "retrying"]
    assert retries and retries[-1]["last_error"]["type"] == "OSError"
    assert retries[-1]["state"] == "queued" and retries[-1]["next_attempt_at"] is not None
    assert events[-1][0] == "succeeded" and events[-1][1]["attempts"] == 2

    failed = actors.broken.send_with_options(jobcast_owner="alice")
    events = await watch(client, server, failed.message_id, timeout=30)
    assert events[-1][0] == "failed"
    assert events[-1][1]["error"] == {"type": "ValueError", "message": "bad input (length 7)"}
    assert "hunter2" not in str(events)

    opaque = actors.opaque.send(5)  # no owner: the service subject's; a set is not JSON
    admin = server.auth("root", "admin")
    events = await watch(client, server, opaque.message_id, headers=admin, timeout=30)
    assert events[-1][0] == "succeeded" and events[-1][1]["result"] == "{5}"
    assert events[-1][1]["owner"] == "service:dramatiq"


async def test_a_dramatiq_message_writes_output_streams(
    actors: ModuleType, procs: Processes, server: LiveServer, client: httpx.AsyncClient
) -> None:
    start_worker(procs, "w1", JOBCAST_MAX_STREAM_BYTES=str(CAP))
    written = actors.write_lines.send_with_options(args=(CHUNKS,), jobcast_owner="alice")
    failed = actors.write_then_fail.send_with_options(args=(20,), jobcast_owner="alice")
    too_much = actors.write_too_much.send_with_options(args=(CAP,), jobcast_owner="alice")
    events = await watch(client, server, written.message_id, timeout=30)
    assert events[-1][0] == "succeeded" and events[-1][1]["result"] == CHUNKS
    events = await watch(client, server, failed.message_id, timeout=30)
    assert events[-1][0] == "failed" and events[-1][1]["error"]["type"] == "RuntimeError"
    events = await watch(client, server, too_much.message_id, timeout=30)
    assert events[-1][0] == "failed"
    error = events[-1][1]["error"]
    assert error["type"] == "PayloadTooLarge" and f"the limit is {CAP}" in error["message"]
    ids = (written.message_id, failed.message_id, too_much.message_id)
    await assert_task_outputs(client, server, *ids)


async def test_a_queued_dramatiq_message_is_cancelled_a_running_one_is_not(
    actors: ModuleType, procs: Processes, server: LiveServer, client: httpx.AsyncClient
) -> None:
    waiting = actors.gate.send_with_options(args=("never",), jobcast_owner="alice")
    cancelled = await client.post(
        f"{server.url}/api/jobs/{waiting.message_id}/cancel", headers=server.auth()
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"

    start_worker(procs, "w1")
    running = actors.gate.send_with_options(args=("running",), jobcast_owner="alice")
    await asyncio.to_thread(actors.wait_running, "running")
    refused = await client.post(
        f"{server.url}/api/jobs/{running.message_id}/cancel", headers=server.auth()
    )
    assert refused.status_code == 409, refused.text
    await asyncio.to_thread(actors.release, "running")
    events = await watch(client, server, running.message_id, timeout=30)
    assert events[-1][0] == "succeeded"
    skipped = await job(client, server, waiting.message_id)  # the worker skipped it
    assert skipped["state"] == "cancelled" and skipped["attempts"] == 0


async def test_a_dramatiq_worker_killed_mid_message_leaves_no_job_running(
    actors: ModuleType, procs: Processes, server: LiveServer, client: httpx.AsyncClient
) -> None:
    """SIGKILL to the worker and its processes: the Redis broker would re-deliver the message
    only after its own heartbeat timeout (a minute); within jobcast's heartbeat window the
    next worker's sweep fails the job as ``Interrupted``, and skips the message if it comes
    back (``dramatiq.M3``)."""
    fast = {"JOBCAST_TEST_DRAMATIQ_HEARTBEAT": "1"}
    doomed = start_worker(procs, "w1", **fast)
    sent = actors.gate.send_with_options(args=("killed",), jobcast_owner="alice")
    await asyncio.to_thread(actors.wait_running, "killed")
    assert (await job(client, server, sent.message_id))["state"] == "running"
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its processes, mid-message
    doomed.wait(10)
    start_worker(procs, "w2", **fast)  # sweeps once a heartbeat from its boot
    events = await watch(client, server, sent.message_id, timeout=30)
    assert events[-1][0] == "failed"
    assert events[-1][1]["error"]["type"] == "Interrupted"
