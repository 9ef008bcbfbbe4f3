"""Jobs on `jobcast worker` processes: progress, cancellation, timeouts, a worker killed mid-job.

Servers run in-process; workers are real subprocesses sharing Redis (queue and broker) and a
PostgreSQL store with the server, as they would on other machines.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from saq import Job as QueueJob
from saq.job import Status
from saq.queue.redis import RedisQueue
from saq.utils import now

from jobcast.jobs.model import Job, new_job_id
from jobcast.jobs.ready_queue import job_meta
from jobcast.jobs.sweep import Sweeper
from jobcast.jobs.worker_queue import TASK, open_queue
from jobcast.stores import open_store
from tests.jobs_support import submit, wait_running, watch
from tests.scale_support import Processes, poll_json, processes
from tests.services import (
    POSTGRES_URL,
    REDIS_URL,
    drop_schema,
    needs_services,
    redis_prefix,
    redis_url,
)
from tests.support import LiveServer, eventually
from tests.test_metrics_processes import scrape_until

pytestmark = needs_services


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Settings every process of one deployment shares: broker, queue and store."""
    for prefix in redis_prefix():
        store_url = f"{POSTGRES_URL}?schema=w_{prefix[-12:]}"
        yield {
            "broker_url": redis_url(prefix),
            "queue_url": f"{REDIS_URL}?queue={prefix}",
            "store_url": store_url,
            "worker_heartbeat_seconds": 1,
            "handlers": "tests.worker_handlers",
        }
        drop_schema(store_url)
        from tests.services import delete_prefix

        delete_prefix(f"saq:{prefix}")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    with processes(tmp_path) as procs:
        yield procs


def terminal(job: dict[str, Any]) -> bool:
    return job["state"] in ("succeeded", "failed", "cancelled")


async def test_jobs_run_on_workers_with_progress_cancellation_and_timeouts(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    procs.worker("worker", data_dir=tmp_path / "worker", **shared)
    server = make_server(**shared)

    job = await submit(client, server, "demo", {"steps": 3, "delay": 0.05})
    events = await watch(client, server, job["id"], timeout=15)
    types = [t for t, _ in events]
    assert types[-1] == "succeeded" and "progress" in types, types
    assert events[-1][1]["result"] == {"steps": 3}

    hanging = await submit(client, server, "hang")
    await wait_running(client, server, hanging["id"])
    cancelled = await client.post(
        f"{server.url}/api/jobs/{hanging['id']}/cancel", headers=server.auth()
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert [t for t, _ in await watch(client, server, hanging["id"])][-1] == "cancelled"

    timed = await submit(client, server, "quick_timeout")
    events = await watch(client, server, timed["id"], timeout=15)
    assert events[-1][0] == "failed" and events[-1][1]["error"]["type"] == "Timeout"


async def test_a_worker_s_jobs_are_in_the_server_s_metrics(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    fast = {**shared, "metrics_snapshot_seconds": 0.2}
    worker = procs.worker("worker", data_dir=tmp_path / "worker", **fast)
    server = make_server(**fast)
    for _ in range(2):
        job = await submit(client, server, "demo", {"steps": 2, "delay": 0.01})
        assert (await watch(client, server, job["id"], timeout=15))[-1][0] == "succeeded"
    ran_on_worker = (
        "jobcast_job_duration_seconds_count"
        f"[('process', '{socket.gethostname()}:{worker.pid}'), ('state', 'succeeded')]"
    )
    values = await scrape_until(client, server.url, {ran_on_worker: 2})
    assert values["jobcast_metrics_processes"] == 2  # the server and the worker
    assert values[ran_on_worker.replace("_count", "_sum")] > 0


async def test_a_queued_job_is_cancelled_before_any_worker_takes_it(
    make_server: Callable[..., LiveServer], shared: dict[str, Any], client: httpx.AsyncClient
) -> None:
    server = make_server(**shared)  # no worker yet: the job waits in the queue
    job = await submit(client, server, "demo")
    cancelled = await client.post(
        f"{server.url}/api/jobs/{job['id']}/cancel", headers=server.auth()
    )
    assert cancelled.json()["state"] == "cancelled"


async def test_a_killed_worker_s_jobs_are_retried_or_failed_never_left_running(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    first = procs.worker("first", data_dir=tmp_path / "w1", job_concurrency=4, **shared)
    server = make_server(**shared)
    unsafe = await submit(client, server, "hang")
    safe = await submit(client, server, "resumable", {"marker": str(tmp_path / "marker")})
    await wait_running(client, server, unsafe["id"], stage="hanging")
    # Its handler leaves the marker before it reports this stage; killed sooner, the second
    # attempt would find no marker and hang as the first did.
    await wait_running(client, server, safe["id"], stage="first attempt")
    # metadata is stored within the store interval of its event (live.L2): a move keeps it
    await poll_json(
        client,
        f"{server.url}/api/jobs/{safe['id']}",
        lambda job: job["metadata"].get("first") == "done",
        timeout=5,
        headers=server.auth(),
    )

    # A kind with a retry policy: the killed run counts as an attempt (retry.T2); the same
    # kind with max_attempts=1 for this submission has none left and fails.
    retried = await submit(client, server, "hang_once")
    response = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": "hang_once", "max_attempts": 1},
        headers=server.auth(),
    )
    once = response.json()
    await wait_running(client, server, retried["id"], stage="attempt 1")
    await wait_running(client, server, once["id"], stage="attempt 1")

    procs.stop(first, signal.SIGKILL)  # no goodbye: only the heartbeat stops
    procs.worker("second", data_dir=tmp_path / "w2", **shared)

    # Recovery takes a heartbeat, the second worker's start and its sweep, which waits for an
    # abort acknowledgement (jobs.sweep.S3) per stuck job, one after another.
    url, auth = f"{server.url}/api/jobs", server.auth()
    failed = await poll_json(client, f"{url}/{unsafe['id']}", terminal, timeout=30, headers=auth)
    assert failed["state"] == "failed"
    assert failed["error"]["type"] == "Interrupted", failed["error"]
    resumed = await poll_json(client, f"{url}/{safe['id']}", terminal, timeout=30, headers=auth)
    assert resumed["state"] == "succeeded" and resumed["result"] == "resumed"
    assert resumed["attempts"] == 2
    assert resumed["metadata"] == {"attempts_seen": [1, 2], "first": "done"}  # across workers
    again = await poll_json(client, f"{url}/{retried['id']}", terminal, timeout=30, headers=auth)
    assert again["state"] == "succeeded" and again["result"] == 2 and again["attempts"] == 2
    ended = await poll_json(client, f"{url}/{once['id']}", terminal, timeout=30, headers=auth)
    assert ended["state"] == "failed" and ended["attempts"] == 1
    assert "already tried 1 times" in ended["error"]["message"]


async def test_a_job_swept_from_a_live_worker_is_interrupted_not_cancelled(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """A worker cut off from Redis past its heartbeat is alive, and another worker's sweep
    aborts its job to hand it over (worker.K2): the job ends as interrupted (R3), not as
    cancelled by a user nobody saw."""
    procs.worker("worker", data_dir=tmp_path / "worker", **shared)
    server = make_server(**shared)
    hanging = await submit(client, server, "hang")
    resumable = await submit(client, server, "resumable", {"marker": str(tmp_path / "marker")})
    await wait_running(client, server, hanging["id"], stage="hanging")
    await wait_running(client, server, resumable["id"], stage="first attempt")

    queue = open_queue(shared["queue_url"])
    await queue.connect()
    try:  # what another worker's sweep does to a job it finds stuck
        for job_id in (hanging["id"], resumable["id"]):
            queued = await queue.job(job_id)
            assert queued is not None
            # A longer wait than a sweep's: SAQ's abort poll skips jobs younger than a second,
            # and these have only just started (a swept job has missed a heartbeat or more).
            await Sweeper(queue).recover(queued, abort_wait=5.0)
    finally:
        await queue.disconnect()

    url, auth = f"{server.url}/api/jobs", server.auth()
    failed = await poll_json(client, f"{url}/{hanging['id']}", terminal, timeout=15, headers=auth)
    assert failed["state"] == "failed" and failed["error"]["type"] == "Interrupted", failed
    resumed = await poll_json(
        client, f"{url}/{resumable['id']}", terminal, timeout=15, headers=auth
    )
    assert resumed["state"] == "succeeded" and resumed["attempts"] == 2, resumed


async def test_a_sweep_that_outlasts_a_heartbeat_is_not_overlapped_by_another(
    shared: dict[str, Any],
) -> None:
    """Overlapping sweeps would each abort and re-queue the same stuck jobs (sweep.S1): a
    second sweep, started while the first still waits on its first stuck job, does nothing."""
    queue = open_queue(shared["queue_url"])
    await queue.connect()
    try:
        ids = [await taken_by_a_dead_worker(queue, key) for key in ("stuck-1", "stuck-2")]
        first_worker, second_worker = Sweeper(queue), Sweeper(queue)
        first = asyncio.create_task(first_worker(1))
        async with asyncio.timeout(10):
            await until_status(queue, "stuck-1", Status.ABORTING)  # the first sweep waits on it
            assert await second_worker(1) == []
            assert sorted(await first) == sorted(ids)
        assert sorted(await queue.ready()) == sorted(ids)  # each once
    finally:
        await queue.disconnect()


async def test_a_job_dequeued_a_moment_ago_is_not_swept(shared: dict[str, Any]) -> None:
    """A job in the active list not yet marked active was just taken by a live worker, or by
    one that died before marking it (sweep.S2): only a later sweep that sees it so again may
    take it back."""
    queue = open_queue(shared["queue_url"])
    await queue.connect()
    try:
        await queue.enqueue(QueueJob(function=TASK, key="just-taken", heartbeat=1, retries=5))
        job = await queue.dequeue()  # its worker would mark it active right after
        assert job is not None and job.status is Status.QUEUED
        sweeper = Sweeper(queue)
        assert await sweeper(60) == []
        assert await sweeper(60) == []  # seen again, but within a heartbeat
        assert await queue.redis.lrange(queue.namespace("active"), 0, -1) == [job.id.encode()]
        assert await sweeper(0, 0.1) == [job.id]  # not marked a heartbeat later: its worker died
        assert await queue.ready() == [job.id]
    finally:
        await queue.disconnect()


async def test_a_job_handed_back_for_later_is_made_due_now_and_a_running_one_is_not(
    shared: dict[str, Any],
) -> None:
    """ready_queue.Q7: ``due_now`` moves a job waiting for a later time (a parked job) to
    now; a job being run, or already due, is left alone; ``on_retried`` follows a retry."""
    queue = open_queue(shared["queue_url"])
    retried: list[str] = []

    async def on_retried(job: QueueJob) -> None:
        retried.append(job.key)

    queue.on_retried = on_retried
    await queue.connect()
    try:
        meta = job_meta("demo", "ann", 0, 0)
        await queue.enqueue(QueueJob(function=TASK, key="parked", retries=5, meta=meta))
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
    finally:
        await queue.disconnect()


async def taken_by_a_dead_worker(queue: RedisQueue, key: str) -> str:
    """A job dequeued and marked running by a worker that then stopped touching it."""
    await queue.enqueue(QueueJob(function=TASK, key=key, heartbeat=1, retries=5))
    job = await queue.dequeue()
    assert job is not None
    job.status = Status.ACTIVE
    job.touched = job.started = now() - 5_000  # five seconds past its one-second heartbeat
    assert job.stuck
    await queue.redis.set(job.id, queue.serialize(job))  # as its last touch left it
    return job.id


async def until_status(queue: RedisQueue, key: str, status: Status) -> None:
    """Wait until a queue job has ``status``: another task's progress has no event here."""

    async def reached() -> bool:
        job = await queue.job(key)
        return job is not None and job.status is status

    await eventually(reached, timeout=30, interval=0.02)


async def test_workers_retry_failed_attempts_and_start_delayed_jobs_at_their_time(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    procs.worker("worker", data_dir=tmp_path / "worker", **shared)
    server = make_server(**shared)
    flaky = await submit(client, server, "flaky", {"succeed_on": 3})
    response = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": "demo", "params": {"steps": 1, "delay": 0}, "delay_seconds": 1.5},
        headers=server.auth(),
    )
    assert response.status_code == 202, response.text
    delayed = response.json()
    assert delayed["state"] == "queued" and delayed["scheduled_for"] is not None

    events = await watch(client, server, flaky["id"], timeout=20)
    types = [t for t, _ in events]
    assert types.count("retrying") == 2 and types[-1] == "succeeded", types
    assert events[-1][1]["attempts"] == 3 and events[-1][1]["result"] == 3
    retrying = [data for t, data in events if t == "retrying"]
    assert all(data["last_error"]["type"] == "ConnectionError" for data in retrying)

    events = await watch(client, server, delayed["id"], timeout=20)
    assert events[-1][0] == "succeeded"
    assert events[-1][1]["started_at"] >= delayed["scheduled_for"]


async def test_a_kind_limit_holds_across_workers(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    for name in ("w1", "w2"):
        procs.worker(name, data_dir=tmp_path / name, job_concurrency=4, **shared)
    server = make_server(**shared)
    markers = tmp_path / "running"
    markers.mkdir()
    jobs = [await submit(client, server, "limited", {"dir": str(markers)}) for _ in range(6)]
    url, auth = f"{server.url}/api/jobs", server.auth()
    for job in jobs:
        done = await poll_json(client, f"{url}/{job['id']}", terminal, timeout=30, headers=auth)
        assert done["state"] == "succeeded", done
        assert done["result"] <= 2, done  # never more than the kind's limit at once
        assert done["attempts"] == 1  # waiting for a slot is not an attempt


async def test_a_delayed_job_handed_out_early_waits_for_its_time(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """SAQ may hand a job out before its time (a sweep re-queues at once): the worker sends
    it back for the time left, and it starts no sooner than ``scheduled_for`` (worker.K6)."""
    server = make_server(**shared)
    response = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": "demo", "params": {"steps": 1, "delay": 0}, "delay_seconds": 3},
        headers=server.auth(),
    )
    job = response.json()
    queue = open_queue(shared["queue_url"])
    await queue.connect()
    try:
        queued = await queue.job(job["id"])
        assert queued is not None
        await queue.redis.zadd(queue.namespace("incomplete"), {queued.id: 1})  # due now
    finally:
        await queue.disconnect()
    procs.worker("worker", data_dir=tmp_path / "worker", **shared)
    events = await watch(client, server, job["id"], timeout=20)
    assert events[-1][0] == "succeeded"
    assert events[-1][1]["started_at"] >= job["scheduled_for"]
    assert events[-1][1]["attempts"] == 1


async def test_a_worker_s_job_waits_for_input_given_through_the_server(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    procs.worker("w", data_dir=tmp_path / "w", **shared)
    server = make_server(**shared)
    job = await submit(client, server, "ask")
    url, auth = f"{server.url}/api/jobs/{job['id']}", server.auth()
    waiting = await poll_json(client, url, lambda j: j["waiting"] is not None, headers=auth)
    assert waiting["waiting"]["schema"] == {"type": "integer"}
    bad = await client.post(f"{url}/input", json={"name": "answer", "value": "x"}, headers=auth)
    assert bad.status_code == 422
    given = await client.post(f"{url}/input", json={"name": "answer", "value": 42}, headers=auth)
    assert given.status_code == 202, given.text
    done = await poll_json(client, url, terminal, timeout=15, headers=auth)
    assert done["state"] == "succeeded" and done["result"] == 42
    assert done["inputs"] == {"answer": 42} and done["metadata"] == {"asked": True}


async def test_a_batch_on_two_workers_ends_once_after_all_its_jobs(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    server = make_server(**shared)
    jobs = [{"kind": "quick", "params": {"n": n}} for n in range(30)]
    response = await client.post(
        f"{server.url}/api/batches", json={"jobs": jobs}, headers=server.auth()
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    # both workers start on a full queue: their jobs end at the same moments
    procs.worker("w1", data_dir=tmp_path / "w1", job_concurrency=8, **shared)
    procs.worker("w2", data_dir=tmp_path / "w2", job_concurrency=8, **shared)
    events = await watch(client, server, batch["id"], timeout=30)
    terminal = [kind for kind, _ in events if kind in ("succeeded", "failed", "cancelled")]
    assert terminal == ["succeeded"]
    assert events[-1][1]["result"] == {"succeeded": 30, "failed": 0, "cancelled": 0, "total": 30}
    for child in batch["jobs"][:3]:
        done = await watch(client, server, child["id"])
        assert done[-1][1]["finished_at"] <= events[-1][1]["finished_at"]


async def test_a_parked_job_whose_worker_is_killed_resumes_with_its_inputs_replayed(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    first = procs.worker("first", data_dir=tmp_path / "w1", **shared)
    server = make_server(**shared)
    job = await submit(client, server, "ask_twice")
    url, auth = f"{server.url}/api/jobs/{job['id']}", server.auth()

    def waits_for(name: str) -> Callable[[dict[str, Any]], bool]:
        return lambda j: (j["waiting"] or {}).get("name") == name

    await poll_json(client, url, waits_for("first"), headers=auth)
    answer = await client.post(f"{url}/input", json={"name": "first", "value": 1}, headers=auth)
    assert answer.status_code == 202
    await poll_json(client, url, waits_for("second"), headers=auth)
    procs.stop(first, signal.SIGKILL)  # parked: its SAQ job waits in the queue (worker.K8)
    procs.worker("second", data_dir=tmp_path / "w2", **shared)

    again = await poll_json(client, url, waits_for("second"), timeout=30, headers=auth)
    assert again["inputs"] == {"first": 1}  # replayed, not asked again
    assert again["attempts"] == 1  # it was parked (worker.K8): nothing was interrupted
    answer = await client.post(f"{url}/input", json={"name": "second", "value": 2}, headers=auth)
    assert answer.status_code == 202
    done = await poll_json(client, url, terminal, timeout=15, headers=auth)
    assert done["state"] == "succeeded" and done["result"] == [1, 2, 1]


async def test_a_worker_s_handler_spawns_children_that_other_workers_run(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    server = make_server(**shared)
    procs.worker("w1", data_dir=tmp_path / "w1", job_concurrency=4, **shared)
    procs.worker("w2", data_dir=tmp_path / "w2", job_concurrency=4, **shared)
    parent = await submit(client, server, "fan_out", {"count": 12})
    events = await watch(client, server, parent["id"], timeout=30)
    terminal = [kind for kind, _ in events if kind in ("succeeded", "failed", "cancelled")]
    assert terminal == ["succeeded"]
    final = events[-1][1]
    assert final["result"] == {"spawned": 12}
    counts = {"succeeded": 12, "failed": 0, "cancelled": 0, "total": 12}
    assert final["metadata"] == {"children": {**counts, "allow_failures": False}}
    listed = await client.get(
        f"{server.url}/api/jobs", params={"parent": parent["id"]}, headers=server.auth()
    )
    children = listed.json()["jobs"]
    assert len(children) == 12
    assert sorted(child["metadata"]["index"] for child in children) == list(range(12))
    for child in children:
        assert child["state"] == "succeeded" and child["owner"] == parent["owner"]
        assert child["finished_at"] <= final["finished_at"]
    # its children's streams open on the server, which learned their owner (access.A1)
    assert (await watch(client, server, children[0]["id"]))[-1][0] == "succeeded"


async def test_cancelling_a_parent_on_a_worker_cancels_its_children_then_ends_it(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    server = make_server(**shared)
    procs.worker("w1", data_dir=tmp_path / "w1", job_concurrency=4, **shared)
    parent = await submit(client, server, "fan_out", {"count": 2, "kind": "hang", "hold": 60})

    async def children_hang() -> bool:
        listed = await client.get(
            f"{server.url}/api/jobs", params={"parent": parent["id"]}, headers=server.auth()
        )
        jobs = listed.json()["jobs"]
        return len(jobs) == 2 and all(job["state"] == "running" for job in jobs)

    await eventually(children_hang, timeout=15)
    cancelled = await client.post(
        f"{server.url}/api/jobs/{parent['id']}/cancel", headers=server.auth()
    )
    assert cancelled.status_code == 200, cancelled.text
    events = await watch(client, server, parent["id"], timeout=30)
    assert events[-1][0] == "cancelled"
    assert events[-1][1]["metadata"]["children"]["cancelled"] == 2


async def test_a_replayed_child_stored_but_never_queued_is_queued_again(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    server = make_server(**shared)
    response = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": "replaying_parent", "delay_seconds": 0.5},
        headers=server.auth(),
    )
    assert response.status_code == 202, response.text
    parent = response.json()
    # what a worker that died between storing a child and queueing it leaves (spawn.py)
    child = Job(
        id=new_job_id(),
        kind="demo",
        owner=parent["owner"],
        params={"steps": 1, "delay": 0},
        max_attempts=1,
        parent_id=parent["id"],
    )
    store = open_store(shared["store_url"])
    await store.open()
    try:
        await store.add_child(child)
    finally:
        await store.close()
    procs.worker("w1", data_dir=tmp_path / "w1", **shared)
    events = await watch(client, server, parent["id"], timeout=30)
    assert events[-1][0] == "succeeded" and events[-1][1]["result"] == child.id
    assert events[-1][1]["metadata"]["children"]["succeeded"] == 1


async def test_a_parked_job_holds_no_worker_slot_and_resumes_with_its_answer(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    """worker.K8: with one SAQ slot, a job queued after the parked one runs while it waits;
    the answer makes the parked one due at once and it ends with the value, same attempt."""
    procs.worker("w", data_dir=tmp_path / "w", job_concurrency=1, **shared)
    server = make_server(**shared)
    parked = await submit(client, server, "ask_park")
    url, auth = f"{server.url}/api/jobs/{parked['id']}", server.auth()
    waiting = await poll_json(client, url, lambda j: j["waiting"] is not None, headers=auth)
    assert waiting["state"] == "running" and waiting["waiting"]["name"] == "answer"
    other = await submit(client, server, "demo", {"steps": 1, "delay": 0})
    assert (await watch(client, server, other["id"], timeout=15))[-1][0] == "succeeded"
    polled = (await client.get(url, headers=auth)).json()
    assert polled["state"] == "running" and polled["waiting"]["name"] == "answer"

    whole = asyncio.create_task(watch(client, server, parked["id"], timeout=15))
    given = await client.post(f"{url}/input", json={"name": "answer", "value": 7}, headers=auth)
    assert given.status_code == 202, given.text
    events = await whole
    types = [t for t, _ in events]
    assert types[-1] == "succeeded", types
    assert events[-1][1]["result"] == {"answer": 7, "attempt": 1}
    assert events[-1][1]["attempts"] == 1 and events[-1][1]["inputs"] == {"answer": 7}
    assert types.count("resumed") == 1 and "waiting" not in types, types


async def test_a_parked_job_times_out_on_a_worker_with_and_without_a_default(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    procs.worker("w", data_dir=tmp_path / "w", job_concurrency=1, **shared)
    server = make_server(**shared)
    defaulted = await submit(client, server, "ask_park", {"timeout": 1, "default": -1})
    timed_out = await submit(client, server, "ask_park", {"timeout": 1})
    url, auth = f"{server.url}/api/jobs", server.auth()
    done = await poll_json(client, f"{url}/{defaulted['id']}", terminal, timeout=20, headers=auth)
    assert done["state"] == "succeeded", done
    assert done["result"] == {"answer": -1, "attempt": 1} and done["waiting"] is None
    done = await poll_json(client, f"{url}/{timed_out['id']}", terminal, timeout=20, headers=auth)
    assert done["state"] == "failed" and done["error"]["type"] == "InputTimeout", done
    assert done["attempts"] == 1


async def test_cancelling_a_parked_job_on_a_worker_ends_it(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    procs.worker("w", data_dir=tmp_path / "w", job_concurrency=1, **shared)
    server = make_server(**shared)
    parked = await submit(client, server, "ask_park", {"stream": True})
    url, auth = f"{server.url}/api/jobs/{parked['id']}", server.auth()
    waiting = await poll_json(client, url, lambda j: j["waiting"] is not None, headers=auth)
    assert [s["closed"] for s in waiting["streams"]] == [False]
    cancelled = await client.post(f"{url}/cancel", headers=auth)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled" and cancelled.json()["waiting"] is None
    late = await client.post(f"{url}/input", json={"name": "answer", "value": 1}, headers=auth)
    assert late.status_code == 409
    after = await submit(client, server, "demo", {"steps": 1, "delay": 0})
    assert (await watch(client, server, after["id"], timeout=15))[-1][0] == "succeeded"
    ended = (await client.get(url, headers=auth)).json()
    assert ended["state"] == "cancelled"  # never re-run
    assert [s["closed"] for s in ended["streams"]] == [True]  # closed with its end


async def test_a_parent_on_workers_that_allows_child_failures_succeeds_even_after_a_retry(
    make_server: Callable[..., LiveServer],
    procs: Processes,
    shared: dict[str, Any],
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    server = make_server(**shared)
    procs.worker("w1", data_dir=tmp_path / "w1", job_concurrency=4, **shared)
    procs.worker("w2", data_dir=tmp_path / "w2", job_concurrency=4, **shared)
    allowing = {"count": 6, "failing": [1, 4], "allow_failures": True}
    tolerant = await submit(client, server, "fan_out", allowing)
    strict = await submit(client, server, "fan_out", {"count": 3, "failing": [1]})
    # allows failures on its first attempt only, then fails it; the second gets its child
    # back (spawn.S2) and the stored switch (S5)
    retried = await submit(client, server, "tolerant_replaying_parent")

    events = await watch(client, server, tolerant["id"], timeout=30)
    assert [kind for kind, _ in events if kind in ("succeeded", "failed", "cancelled")] == [
        "succeeded"
    ]
    final = events[-1][1]
    assert final["result"] == {"spawned": 6} and final["error"] is None
    counts = {"succeeded": 4, "failed": 2, "cancelled": 0, "total": 6}
    assert final["metadata"] == {"children": {**counts, "allow_failures": True}}

    events = await watch(client, server, strict["id"], timeout=30)
    assert events[-1][0] == "failed" and events[-1][1]["error"]["type"] == "BatchFailed"
    assert events[-1][1]["metadata"]["children"]["allow_failures"] is False

    events = await watch(client, server, retried["id"], timeout=30)
    assert events[-1][0] == "succeeded", events[-1]
    assert events[-1][1]["attempts"] == 2  # it was retried
    counts = {"succeeded": 0, "failed": 1, "cancelled": 0, "total": 1}
    assert events[-1][1]["metadata"]["children"] == {**counts, "allow_failures": True}
    listed = await client.get(
        f"{server.url}/api/jobs", params={"parent": retried["id"]}, headers=server.auth()
    )
    (child,) = listed.json()["jobs"]
    assert child["state"] == "failed" and events[-1][1]["result"] == child["id"]
