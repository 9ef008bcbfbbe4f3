"""The order in which `jobcast worker` processes take jobs (``jobs/ready_queue.py``):
priorities, submission order, per-kind and per-owner limits, delayed jobs across a restart.

Workers are real subprocesses sharing Redis (queue and broker) and a PostgreSQL store with the
servers (``test_workers.py`` has the fixtures); the handlers are ``tests/worker_handlers.py``'s
``counted`` kinds, which number the jobs in the order they start, through one Redis counter.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from saq import Job as QueueJob
from saq.job import Status
from saq.queue.redis import RedisQueue

from jobcast.jobs.model import Job, JobState, new_job_id
from jobcast.jobs.ready_queue import job_meta
from jobcast.jobs.worker_queue import TASK, open_queue, queue_job
from jobcast.stores import open_store
from jobcast.stores.base import JobStore
from tests.jobs_support import watch
from tests.scale_support import Processes, poll_json
from tests.services import REDIS_URL, needs_services
from tests.support import LiveServer, eventually
from tests.test_workers import procs, shared, terminal  # noqa: F401  (fixtures)

pytestmark = needs_services


def counter(settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Params of a ``counted`` job: its counters live under the test's Redis prefix."""
    prefix = settings["broker_url"].rsplit("prefix=", 1)[1]
    return {"redis": REDIS_URL, "key": f"{prefix}:counted", **extra}


async def finished(
    client: httpx.AsyncClient, server: LiveServer, jobs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    done = []
    for job in jobs:
        url, auth = f"{server.url}/api/jobs/{job['id']}", server.auth(job["owner"])
        end = await poll_json(client, url, terminal, timeout=30, headers=auth)
        assert end["state"] == "succeeded", end
        done.append(end)
    return done


async def test_a_worker_takes_higher_priorities_first_then_submission_order(
    make_server: Callable[..., LiveServer],
    procs: Processes,  # noqa: F811
    shared: dict[str, Any],  # noqa: F811
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    server = make_server(**shared)  # no worker yet: the jobs wait in the queue
    jobs = []
    for name, priority in [("low", -5), ("a", 0), ("urgent", 50), ("b", 0), ("high", 10)]:
        body = {"kind": "counted", "params": counter(shared, name=name), "priority": priority}
        response = await client.post(f"{server.url}/api/jobs", json=body, headers=server.auth())
        assert response.status_code == 202, response.text
        jobs.append(response.json())
    procs.worker("worker", data_dir=tmp_path / "worker", job_concurrency=1, **shared)
    done = await finished(client, server, jobs)
    started = sorted(done, key=lambda job: job["result"]["order"])
    assert [job["params"]["name"] for job in started] == ["urgent", "high", "a", "b", "low"]


async def test_an_owner_limit_holds_across_workers_and_other_owners_take_the_free_slots(
    make_server: Callable[..., LiveServer],
    procs: Processes,  # noqa: F811
    shared: dict[str, Any],  # noqa: F811
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    limited = {**shared, "job_owner_concurrency": 1}
    server = make_server(**limited)
    jobs = []
    for owner, priority in [("ann", 9)] * 3 + [("bob", 0)] * 2:
        body = {"kind": "counted", "params": counter(limited, work=0.2), "priority": priority}
        response = await client.post(
            f"{server.url}/api/jobs", json=body, headers=server.auth(owner)
        )
        assert response.status_code == 202, response.text
        jobs.append(response.json())
    for name in ("w1", "w2"):  # four slots in all
        procs.worker(name, data_dir=tmp_path / name, job_concurrency=2, **limited)
    done = await finished(client, server, jobs)
    assert all(job["result"]["owner"] == 1 for job in done), done  # never two of one owner
    assert all(job["attempts"] == 1 for job in done)  # waiting for a slot is not an attempt
    ann = sorted(job["result"]["order"] for job in done if job["owner"] == "ann")
    bob = sorted(job["result"]["order"] for job in done if job["owner"] == "bob")
    # ann's three come first, but only one runs at a time: bob's jobs take the free slots
    # while ann's first runs, not after all of ann's
    assert bob[0] < ann[1], (ann, bob)


async def test_priorities_and_a_kind_limit_hold_over_a_thousand_queued_jobs_on_four_workers(
    procs: Processes,  # noqa: F811
    shared: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    """1,000 jobs queued before any worker starts (as after a restart), four workers of one
    slot each. The limited kind never has more than 2 running. Within a kind, jobs start in
    priority order, then submission order, up to the jobs that four workers take at the same
    moment: a job starts at most 3 places before a job the queue put ahead of it (each worker
    numbers its job a moment after Redis handed it out, so four takes may be numbered in any
    order; without priorities, nearly every job would start after jobs it should precede)."""
    rng = random.Random(16)
    store = open_store(shared["store_url"])
    await store.open()
    queue = open_queue(shared["queue_url"])
    await queue.connect()
    try:
        jobs = [
            Job(
                id=new_job_id(),
                kind=rng.choice(["counted_limited", "counted"]),
                owner="alice",
                params=counter(shared, work=0.02),
                priority=rng.randint(-100, 100),
            )
            for _ in range(1000)
        ]
        for chunk in range(0, len(jobs), 100):
            await asyncio.gather(*(store.create(job) for job in jobs[chunk : chunk + 100]))
        for job in jobs:  # as the server queues them (worker_queue.QueueRunner)
            await queue.enqueue(queue_job(job, None, shared["worker_heartbeat_seconds"], 3))
        started_at = time.monotonic()
        for index in range(4):
            name = f"w{index}"
            procs.worker(name, data_dir=tmp_path / name, job_concurrency=1, **shared)
        await eventually(lambda: all_succeeded(store, len(jobs)), timeout=240, interval=0.5)
        elapsed = time.monotonic() - started_at
        results = {job.id: (await store.get(job.id)).result for job in jobs}  # type: ignore[union-attr]
    finally:
        await queue.disconnect()
        await store.close()
    for kind in ("counted_limited", "counted"):
        mine = sorted((job for job in jobs if job.kind == kind), key=lambda j: (-j.priority, j.id))
        rank = {job.id: place for place, job in enumerate(mine)}
        by_start = sorted(rank, key=lambda job_id: results[job_id]["order"])
        # how far each job started ahead of its place in the queue's order
        ahead = [rank[job_id] - place for place, job_id in enumerate(by_start)]
        assert max(ahead) <= 3, (kind, sorted(ahead)[-10:], f"{elapsed:.1f} s")
    limited = [results[job.id]["kind"] for job in jobs if job.kind == "counted_limited"]
    assert max(limited) == 2  # the limit was reached, never passed


async def all_succeeded(store: JobStore, total: int) -> bool:
    counts = await store.count_by_state()
    assert not counts.get(JobState.FAILED), counts
    return counts.get(JobState.SUCCEEDED, 0) == total


async def test_a_delayed_job_runs_within_a_second_of_its_time_across_a_worker_restart(
    make_server: Callable[..., LiveServer],
    procs: Processes,  # noqa: F811
    shared: dict[str, Any],  # noqa: F811
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """The server and the worker are stopped before the job's time and started again: the
    new worker starts it within one second of its time (ready_queue.Q5)."""
    worker = procs.worker("w1", data_dir=tmp_path / "w1", **shared)
    server = make_server(**shared)
    # Far enough ahead for two stops and two starts on a loaded machine (4 s was not, in CI).
    run_at = datetime.fromtimestamp(time.time() + 8.0, UTC)
    body = {"kind": "demo", "params": {"steps": 1, "delay": 0}, "run_at": run_at.isoformat()}
    response = await client.post(f"{server.url}/api/jobs", json=body, headers=server.auth())
    assert response.status_code == 202, response.text
    job = response.json()
    procs.stop(worker)
    server.stop()

    procs.worker("w2", data_dir=tmp_path / "w2", **shared)
    restarted = make_server(**shared)
    polled = await client.get(f"{restarted.url}/api/jobs/{job['id']}", headers=restarted.auth())
    assert polled.json()["state"] == "queued"  # not yet
    events = await watch(client, restarted, job["id"], timeout=15)
    assert events[-1][0] == "succeeded"
    started = datetime.fromisoformat(events[-1][1]["started_at"])
    assert run_at <= started <= run_at + timedelta(seconds=1), (run_at, started)


async def test_a_delayed_job_cancelled_before_its_time_is_cancelled_at_once(
    make_server: Callable[..., LiveServer],
    shared: dict[str, Any],  # noqa: F811
    client: httpx.AsyncClient,
) -> None:
    """Nobody runs a job that waits for its time: cancelling it ends it here, without waiting
    for a worker's answer (ready_queue's abort)."""
    server = make_server(**shared)
    body = {"kind": "demo", "params": {"steps": 1, "delay": 0}, "delay_seconds": 60}
    job = (await client.post(f"{server.url}/api/jobs", json=body, headers=server.auth())).json()
    started = time.monotonic()
    cancelled = await client.post(
        f"{server.url}/api/jobs/{job['id']}/cancel", headers=server.auth()
    )
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert time.monotonic() - started < 2  # not the cancel wait of a running job (5 s)
    queue = open_queue(shared["queue_url"])
    await queue.connect()
    try:
        queued = await queue.job(job["id"])
        assert queued is not None and queued.status is Status.ABORTED
        assert await queue.ready() == []
        assert await queue.redis.zcard(queue.namespace("incomplete")) == 0
    finally:
        await queue.disconnect()


async def test_jobs_queued_by_an_earlier_version_are_still_taken(
    shared: dict[str, Any],  # noqa: F811
) -> None:
    """SAQ's own queue left jobs in its ``queued`` list: they are taken after the sorted sets
    (ready_queue.Q6), and a take with nothing left ends at its timeout."""
    queue = open_queue(shared["queue_url"])
    await queue.connect()
    try:
        earlier = RedisQueue(queue.redis, name=queue.name)
        await earlier.enqueue(QueueJob(function=TASK, key="old-1"))
        await queue.enqueue(
            QueueJob(function=TASK, key="new-1", meta=job_meta("demo", "alice", 5, 0))
        )
        assert await queue.count("queued") == 2
        taken = [await queue.dequeue(timeout=1), await queue.dequeue(timeout=1)]
        assert [job.key for job in taken if job is not None] == ["new-1", "old-1"]
        assert await queue.dequeue(timeout=0.1) is None
    finally:
        await queue.disconnect()
