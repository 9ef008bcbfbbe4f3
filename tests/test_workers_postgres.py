"""`jobcast worker` on a PostgreSQL-only deployment (``jobs/postgres_queue.py``): no Redis in
the deployment, the broker defaults to the store's database and the queue is in it too.

Servers are real `jobcast serve` subprocesses or in-process servers, workers real
subprocesses; the only setting they share is the database (store and queue URL). The
``counted`` handlers number the jobs through a Redis counter: that is the test's own
instrument, not part of the deployment.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg import sql
from saq import Job as QueueJob
from saq.job import Status
from saq.utils import now

from jobcast.jobs.postgres_queue import PostgresReadyQueue
from jobcast.jobs.ready_queue import job_meta
from jobcast.jobs.worker_queue import TASK, open_job_queue
from jobcast.stores import open_store
from tests.jobs_support import submit, wait_running, watch
from tests.scale_support import Processes, TcpProxy, jobcast_env, poll_json, processes
from tests.services import (
    POSTGRES_URL,
    REDIS_URL,
    drop_schema,
    needs_services,
    redis_prefix,
    unique_prefix,
)
from tests.support import LiveServer, eventually
from tests.test_scale_out import auth
from tests.test_workers import terminal

pytestmark = needs_services


@pytest.fixture
def pg_shared() -> Iterator[dict[str, Any]]:
    """One database for everything: the store, and by default the broker; the queue too."""
    prefix = unique_prefix()
    store_url = f"{POSTGRES_URL}?schema=q_{prefix[-12:]}"
    yield {
        "store_url": store_url,
        "queue_url": store_url,
        "worker_heartbeat_seconds": 1,
        "handlers": "tests.worker_handlers",
    }
    drop_schema(store_url)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with processes(tmp_path) as procs:
        yield procs


@pytest.fixture
def counter_prefix() -> Iterator[str]:
    yield from redis_prefix()


@pytest.fixture
async def queue(pg_shared: dict[str, Any]) -> AsyncIterator[PostgresReadyQueue]:
    queue = open_job_queue(pg_shared["queue_url"])
    assert isinstance(queue, PostgresReadyQueue)
    await queue.connect()
    yield queue
    await queue.disconnect()


def queued(key: str, kind: str = "demo", owner: str = "ann", priority: int = 0) -> QueueJob:
    meta = job_meta(kind, owner, priority, 0)
    return QueueJob(function=TASK, key=key, heartbeat=1, retries=5, meta=meta)


async def take_all(queue: PostgresReadyQueue) -> list[str]:
    taken = []
    while (job := await queue.dequeue(timeout=0.2)) is not None:
        taken.append(job.key)
    return taken


def counter(prefix: str, **extra: Any) -> dict[str, Any]:
    return {"redis": REDIS_URL, "key": f"{prefix}:counted", **extra}


async def test_two_serve_instances_and_a_worker_share_only_the_database(
    procs: Processes, pg_shared: dict[str, Any], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A job submitted to one instance runs on a worker; its progress streams from the other
    instance; a running job is cancelled through the other instance."""
    first = procs.serve("a", **pg_shared)
    second = procs.serve("b", **pg_shared)
    procs.worker("worker", data_dir=tmp_path / "worker", **pg_shared)
    response = await client.post(
        f"{first}/api/jobs", json={"kind": "demo", "params": {"steps": 3}}, headers=auth()
    )
    assert response.status_code == 202, response.text
    job = response.json()
    on_second: Any = _Base(second)
    events = await watch(client, on_second, job["id"], timeout=20)
    types = [kind for kind, _ in events]
    assert types[-1] == "succeeded" and "progress" in types, types

    response = await client.post(f"{first}/api/jobs", json={"kind": "hang"}, headers=auth())
    hanging = response.json()
    await wait_running(client, on_second, hanging["id"], stage="hanging")
    cancelled = await client.post(f"{second}/api/jobs/{hanging['id']}/cancel", headers=auth())
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"


async def test_a_sigkilled_worker_s_job_is_swept_and_finished_by_another_worker(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    pg_shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    first = procs.worker("first", data_dir=tmp_path / "w1", **pg_shared)
    server = make_server(**pg_shared)
    safe = await submit(client, server, "resumable", {"marker": str(tmp_path / "marker")})
    unsafe = await submit(client, server, "hang")
    await wait_running(client, server, safe["id"], stage="first attempt")
    await wait_running(client, server, unsafe["id"], stage="hanging")
    procs.stop(first, signal.SIGKILL)  # no goodbye: only the heartbeat stops
    procs.worker("second", data_dir=tmp_path / "w2", **pg_shared)

    url, auth_ = f"{server.url}/api/jobs", server.auth()
    resumed = await poll_json(client, f"{url}/{safe['id']}", terminal, timeout=30, headers=auth_)
    assert resumed["state"] == "succeeded" and resumed["result"] == "resumed", resumed
    assert resumed["attempts"] == 2
    failed = await poll_json(client, f"{url}/{unsafe['id']}", terminal, timeout=30, headers=auth_)
    assert failed["state"] == "failed" and failed["error"]["type"] == "Interrupted", failed


async def test_priorities_and_the_owner_and_kind_limits_hold_across_two_workers(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    pg_shared: dict[str, Any],
    counter_prefix: str,
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """Jobs queued before any worker starts: the most urgent starts first; two workers of two
    slots each never run two jobs of one owner, nor more than 2 of the limited kind."""
    limited = {**pg_shared, "job_owner_concurrency": 1}
    prefix = counter_prefix
    server = make_server(**limited)
    plan = [("ann", "counted", 0)] * 3 + [(f"o{n}", "counted_limited", 0) for n in range(6)]
    plan.append(("zed", "counted", 50))
    jobs = []
    for owner, kind, priority in plan:
        body = {"kind": kind, "params": counter(prefix, work=0.2), "priority": priority}
        response = await client.post(
            f"{server.url}/api/jobs", json=body, headers=server.auth(owner)
        )
        assert response.status_code == 202, response.text
        jobs.append(response.json())
    for name in ("w1", "w2"):
        procs.worker(name, data_dir=tmp_path / name, job_concurrency=2, **limited)
    done = []
    for job in jobs:
        url, auth_ = f"{server.url}/api/jobs/{job['id']}", server.auth(job["owner"])
        end = await poll_json(client, url, terminal, timeout=30, headers=auth_)
        assert end["state"] == "succeeded", end
        done.append(end)
    assert all(job["result"]["owner"] == 1 for job in done), done
    assert all(job["attempts"] == 1 for job in done)
    kinds = [job["result"]["kind"] for job in done if job["kind"] == "counted_limited"]
    assert max(kinds) == 2, kinds  # reached, never passed
    # submitted last, taken first: among the first four to start (four slots start at once)
    assert next(job for job in done if job["owner"] == "zed")["result"]["order"] <= 4


async def test_a_queued_job_is_cancelled_at_once_and_the_queue_forgets_it(
    make_server: Callable[..., LiveServer], pg_shared: dict[str, Any], client: httpx.AsyncClient
) -> None:
    server = make_server(**pg_shared)  # no worker: the job waits in the queue
    job = await submit(client, server, "demo")
    cancelled = await client.post(
        f"{server.url}/api/jobs/{job['id']}/cancel", headers=server.auth()
    )
    assert cancelled.json()["state"] == "cancelled"
    queue = open_job_queue(pg_shared["queue_url"])
    assert isinstance(queue, PostgresReadyQueue)
    await queue.connect()
    try:
        queued = await queue.job(job["id"])
        assert queued is not None and queued.status is Status.ABORTED
        assert await queue.ready() == []
        assert await queue.dequeue(timeout=0.1) is None
    finally:
        await queue.disconnect()


class _Base:
    """What ``watch`` and ``wait_running`` need of a server: its URL and a token."""

    def __init__(self, url: str) -> None:
        self.url = url

    def auth(self, sub: str = "alice", role: str = "user") -> dict[str, str]:
        return auth(sub, role)


async def test_takes_go_by_priority_then_submission_within_the_kind_and_owner_limits(
    queue: PostgresReadyQueue,
) -> None:
    queue.limits, queue.owner_limit = {"slow": 1}, 2
    plan = [("k1", "demo", "ann", 0), ("k2", "slow", "bob", 5), ("k3", "slow", "bob", 9)]
    plan += [("k4", "demo", "ann", 0), ("k5", "demo", "ann", 1), ("k6", "demo", "cat", 0)]
    for key, kind, owner, priority in plan:
        await queue.enqueue(queued(key, kind, owner, priority))
    assert await queue.ready() == ["k3", "k2", "k5", "k1", "k4", "k6"]
    # slow is full after k3, ann after k5 and k1: their other jobs wait, others go past them
    assert await take_all(queue) == ["k3", "k5", "k1", "k6"]
    for key in ("k3", "k5"):
        job = await queue.job(key)
        assert job is not None
        await queue.finish(job, Status.COMPLETE)
    assert await take_all(queue) == ["k2", "k4"]


async def test_a_delayed_job_is_taken_at_its_time_not_before(queue: PostgresReadyQueue) -> None:
    at = time.time() + 0.5
    job = QueueJob(function=TASK, key="later", meta=job_meta("demo", "ann", 0, at))
    await queue.enqueue(job)
    assert await queue.dequeue(timeout=0.1) is None
    taken = await queue.dequeue(timeout=5)  # waits until its time, not a whole poll
    assert taken is not None and taken.key == "later"
    assert at <= time.time() < at + 1


async def test_a_job_handed_back_for_later_is_made_due_now_and_a_running_one_is_not(
    queue: PostgresReadyQueue,
) -> None:
    """postgres_queue.P7: ``due_now`` moves a job waiting for a later time (a parked job) to
    now; a job being run, or already due, is left alone; ``on_retried`` follows a retry."""
    retried: list[str] = []

    async def on_retried(job: QueueJob) -> None:
        retried.append(job.key)

    queue.on_retried = on_retried
    await queue.enqueue(queued("parked"))
    taken = await queue.dequeue(timeout=1)
    assert taken is not None
    assert not await queue.due_now("parked")  # being run: not waiting for a time
    taken.retry_delay, taken.retry_backoff = 3600, False
    await queue.retry(taken, "parked")  # as a parked job goes back (worker.K8)
    assert retried == ["parked"]
    assert await queue.dequeue(timeout=0.2) is None  # not before its time
    assert await queue.due_now("parked")
    again = await queue.dequeue(timeout=1)
    assert again is not None and again.key == "parked"
    assert not await queue.due_now("missing")


async def test_one_sweep_at_a_time_re_queues_a_dead_worker_s_jobs_and_leaves_live_ones(
    queue: PostgresReadyQueue,
) -> None:
    for key in ("dead-1", "dead-2", "live"):
        await queue.enqueue(queued(key))
    for job in [await queue.dequeue(timeout=1) for _ in range(3)]:
        assert job is not None
        if job.key != "live":  # its worker stopped touching it five seconds ago
            job.touched = job.started = now() - 5_000
            await queue._update(job, status=Status.ACTIVE)
    first = asyncio.create_task(queue.sweep(1, abort=0.2))

    async def aborting() -> bool:
        job = await queue.job("dead-1")
        return job is not None and job.status is Status.ABORTING

    async with asyncio.timeout(10):
        await eventually(aborting, timeout=10, interval=0.02)
        assert await queue.sweep(1, abort=0.2) == []  # the first one still sweeps
        assert sorted(await first) == ["dead-1", "dead-2"]
    assert await queue.ready() == ["dead-1", "dead-2"]
    live = await queue.job("live")
    assert live is not None and live.status is Status.ACTIVE
    assert await queue.abort_reason(live) is None


async def test_a_worker_stopped_with_sigterm_hands_its_job_to_another(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    pg_shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """A rolling restart: the stopped worker's retry-safe job runs again on the next one."""
    first = procs.worker("first", data_dir=tmp_path / "w1", **pg_shared)
    server = make_server(**pg_shared)
    safe = await submit(client, server, "resumable", {"marker": str(tmp_path / "marker")})
    await wait_running(client, server, safe["id"], stage="first attempt")
    procs.stop(first)  # SIGTERM
    procs.worker("second", data_dir=tmp_path / "w2", **pg_shared)
    url, auth_ = f"{server.url}/api/jobs/{safe['id']}", server.auth()
    resumed = await poll_json(client, url, terminal, timeout=30, headers=auth_)
    assert resumed["state"] == "succeeded" and resumed["attempts"] == 2, resumed


async def test_a_worker_cut_off_from_the_database_takes_jobs_again_once_it_is_back(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    pg_shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """The worker reaches the database through a proxy that drops every connection: its
    queue listens again once the database is back, and it runs the next job."""
    proxy = TcpProxy(5432).start()
    try:
        url = pg_shared["store_url"].replace("127.0.0.1", f"127.0.0.1:{proxy.port}")
        through = {**pg_shared, "store_url": url, "queue_url": url}
        procs.worker("worker", data_dir=tmp_path / "worker", **through)
        server = make_server(**pg_shared)
        first = await submit(client, server, "demo", {"steps": 1})
        url_of, auth_ = f"{server.url}/api/jobs", server.auth()
        done = await poll_json(client, f"{url_of}/{first['id']}", terminal, headers=auth_)
        assert done["state"] == "succeeded"

        proxy.cut()
        await eventually(
            lambda: "queue notifications lost" in procs.log("worker"), timeout=20, interval=0.1
        )
        proxy.resume()
        job = await submit(client, server, "demo", {"steps": 1})
        done = await poll_json(client, f"{url_of}/{job['id']}", terminal, timeout=30, headers=auth_)
        assert done["state"] == "succeeded", done
    finally:
        proxy.stop()


def test_a_worker_without_a_queue_on_a_postgresql_store_says_which_url_to_set(
    pg_shared: dict[str, Any], tmp_path: Path
) -> None:
    settings = {"store_url": pg_shared["store_url"], "data_dir": tmp_path}
    done = subprocess.run(
        [sys.executable, "-m", "jobcast", "worker"],
        env=jobcast_env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "set JOBCAST_QUEUE_URL to the store's URL (JOBCAST_STORE_URL)" in done.stderr


async def test_a_parked_job_frees_its_slot_and_its_answer_or_cancel_reaches_it(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    pg_shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """worker.K8 on the PostgreSQL queue (postgres_queue.P7): with one slot, a job queued
    after the parked one runs; the answer makes it due at once; a parked job cancels."""
    procs.worker("w", data_dir=tmp_path / "w", job_concurrency=1, **pg_shared)
    server = make_server(**pg_shared)
    parked = await submit(client, server, "ask_park")
    doomed = await submit(client, server, "ask_park")
    api, headers = f"{server.url}/api/jobs", server.auth()
    for job in (parked, doomed):
        await poll_json(
            client, f"{api}/{job['id']}", lambda j: j["waiting"] is not None, headers=headers
        )
    other = await submit(client, server, "demo", {"steps": 1, "delay": 0})
    assert (await watch(client, server, other["id"], timeout=15))[-1][0] == "succeeded"

    url = f"{api}/{parked['id']}"
    given = await client.post(f"{url}/input", json={"name": "answer", "value": 5}, headers=headers)
    assert given.status_code == 202, given.text
    done = await poll_json(client, url, terminal, timeout=15, headers=headers)
    assert done["state"] == "succeeded" and done["result"] == {"answer": 5, "attempt": 1}
    cancelled = await client.post(f"{api}/{doomed['id']}/cancel", headers=headers)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"


async def test_an_answer_that_races_the_park_wakes_the_job_through_its_worker(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    pg_shared: dict[str, Any],
    queue: PostgresReadyQueue,
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """worker.K8: an answer stored after the handler found none but before SAQ holds the job
    again (its row is held here, so the hand-back waits) wakes the job through the worker's
    look at the store once the hand-back is done; nothing else wakes it (the answer goes
    straight to the store: no server's ``due_now``), and the look-again is a minute away."""
    slow_sweep = {**pg_shared, "worker_heartbeat_seconds": 5}  # the held row is not swept
    procs.worker("w", data_dir=tmp_path / "w", **slow_sweep)
    server = make_server(**slow_sweep)
    job = await submit(client, server, "ask_park", {"pause": 0.5})
    url, headers = f"{server.url}/api/jobs/{job['id']}", server.auth()

    async def running() -> bool:
        queued = await queue.job(job["id"])
        return queued is not None and queued.status is Status.ACTIVE

    await eventually(running, timeout=10, interval=0.02)
    hold = sql.SQL("SELECT 1 FROM {} WHERE key = %s FOR UPDATE").format(
        sql.Identifier(queue.sql.jobs_name)
    )
    async with queue.pool.connection() as conn, conn.transaction():
        await conn.execute(hold, [job["id"]])  # the worker's hand-back waits for this row
        await poll_json(client, url, lambda j: j["waiting"] is not None, headers=headers)
        store = open_store(pg_shared["store_url"])
        await store.open()
        try:
            assert await store.put_input(job["id"], "answer", 9, "alice")
        finally:
            await store.close()
    done = await poll_json(client, url, terminal, timeout=15, headers=headers)
    assert done["state"] == "succeeded" and done["result"] == {"answer": 9, "attempt": 1}
