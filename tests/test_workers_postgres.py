"""`jobcast worker` on a PostgreSQL-only deployment (``jobs/postgres_queue.py``): no Redis in
the deployment, the broker defaults to the store's database and the queue is in it too.

Servers are real `jobcast serve` subprocesses or in-process servers, workers real
subprocesses; the only setting they share is the database (store and queue URL). The
``counted`` handlers number the jobs through a Redis counter: that is the test's own
instrument, not part of the deployment.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from saq.job import Status

from jobcast.jobs.postgres_queue import PostgresReadyQueue
from jobcast.jobs.worker_queue import open_job_queue
from tests.jobs_support import submit, wait_running, watch
from tests.scale_support import Processes, poll_json, processes
from tests.services import (
    POSTGRES_URL,
    REDIS_URL,
    drop_schema,
    needs_services,
    redis_prefix,
    unique_prefix,
)
from tests.support import LiveServer
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
