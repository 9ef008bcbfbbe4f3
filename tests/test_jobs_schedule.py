"""Delayed runs and priorities (``jobs/schedule.py``, ``jobs/submit_options.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobcast.jobs import JobContext, Registry
from jobcast.jobs.model import JobState
from jobcast.jobs.schedule import JobSchedule
from tests.jobs_support import watch
from tests.support import LiveServer, eventually
from tests.test_runner import embedded, events_until_end


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_higher_priority_first_then_submission_order() -> None:
    schedule = JobSchedule()
    for job_id, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]:
        schedule.push(job_id, priority)
    assert [schedule.pop() for _ in range(6)] == ["b", "d", "a", "c", "e", None]


def test_a_scheduled_job_waits_for_its_time_then_takes_its_priority() -> None:
    clock = Clock()
    schedule = JobSchedule(clock)
    schedule.push("later", 9, not_before=1010.0)
    schedule.push("now", 0)
    schedule.push("cancelled", 0)
    schedule.remove("cancelled")
    assert len(schedule) == 2 and schedule.next_due() == 10.0
    assert schedule.pop() == "now" and schedule.pop() is None
    clock.now = 1010.0
    assert schedule.next_due() == 0.0
    assert schedule.pop() == "later" and schedule.next_due() is None and len(schedule) == 0


def order_registry(started: list[str]) -> Registry:
    registry = Registry()

    @registry.handler("record")
    async def record(ctx: JobContext, params: dict[str, Any]) -> None:
        started.append(params["name"])

    return registry


async def test_the_embedded_runner_starts_higher_priorities_first(tmp_path: Path) -> None:
    started: list[str] = []
    async with embedded(tmp_path, order_registry(started), concurrency=1) as (runner, _):
        gate = asyncio.Event()
        registry = runner.registry

        @registry.handler("gate")
        async def hold(ctx: JobContext, params: dict[str, Any]) -> None:
            await gate.wait()

        first = await runner.submit("gate", {}, "alice")  # takes the only slot
        jobs = [
            await runner.submit("record", {"name": name}, "alice", priority=priority)
            for name, priority in [("low", -5), ("a", 0), ("urgent", 50), ("b", 0)]
        ]
        gate.set()
        await events_until_end(runner, first)
        for job in jobs:
            await events_until_end(runner, job)
        assert started == ["urgent", "a", "b", "low"]


async def post(
    client: httpx.AsyncClient, server: LiveServer, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post(
        f"{server.url}/api/jobs", json=body, headers={**server.auth(), **headers}
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"priority": 101}, "priority must be between -100 and 100"),
        ({"priority": "high"}, "priority must be an integer"),
        ({"delay_seconds": -1}, "delay_seconds must be between"),
        ({"delay_seconds": 1e12}, "delay_seconds must be between"),
        ({"delay_seconds": "soon"}, "delay_seconds must be a number"),
        ({"run_at": "tomorrow"}, "run_at must be an ISO 8601 time"),
        ({"run_at": "2030-01-01T12:00:00"}, "run_at needs a time zone offset"),
        ({"run_at": "2999-01-01T00:00:00Z"}, "run_at is more than 30 days ahead"),
        ({"delay_seconds": 1, "run_at": "2030-01-01T12:00:00Z"}, "not both"),
        ({"max_attempts": 0}, "max_attempts must be between 1 and 25"),
        ({"max_attempts": 2.5}, "max_attempts must be an integer"),
    ],
)
async def test_scheduling_fields_are_validated(
    server: LiveServer, client: httpx.AsyncClient, fields: dict[str, Any], message: str
) -> None:
    response = await post(client, server, {"kind": "demo", **fields})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_input"
    assert message in response.json()["message"]


async def test_multipart_takes_the_same_fields(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    files = {"file": ("a.txt", b"hello", "text/plain")}
    data = {"kind": "ingest", "priority": "7", "delay_seconds": "60", "max_attempts": "2"}
    response = await client.post(
        f"{server.url}/api/jobs", data=data, files=files, headers=server.auth()
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["priority"] == 7 and body["max_attempts"] == 2
    assert body["state"] == "queued" and body["scheduled_for"] is not None
    bad = await client.post(
        f"{server.url}/api/jobs",
        data={**data, "priority": "x"},
        files=files,
        headers=server.auth(),
    )
    assert bad.status_code == 422 and "priority" in bad.json()["message"]


async def test_a_delayed_job_runs_at_its_time_across_a_restart(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server()
    run_at = datetime.fromtimestamp(time.time() + 2.0, UTC)
    response = await post(
        client,
        server,
        {"kind": "demo", "params": {"steps": 1, "delay": 0}, "run_at": run_at.isoformat()},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] == "queued"
    assert job["scheduled_for"] == run_at.isoformat().replace("+00:00", "Z")
    server.stop()  # before its time

    restarted = make_server()
    polled = await client.get(f"{restarted.url}/api/jobs/{job['id']}", headers=restarted.auth())
    assert polled.json()["state"] == "queued"  # not yet
    events = await watch(client, restarted, job["id"], timeout=10)
    assert events[-1][0] == "succeeded"
    started = datetime.fromisoformat(events[-1][1]["started_at"])
    assert run_at <= started <= run_at + timedelta(seconds=1)


def test_a_blocked_group_is_skipped_and_keeps_its_places() -> None:
    schedule = JobSchedule()
    for job_id, group, priority in [("a1", "a", 9), ("b1", "b", 0), ("a2", "a", 9), ("b2", "b", 0)]:
        schedule.push(job_id, priority, group=group)
    assert schedule.pop(blocked={"a"}) == "b1"
    assert schedule.pop(blocked={"a", "b"}) is None
    assert [schedule.pop(), schedule.pop(), schedule.pop()] == ["a1", "a2", "b2"]


def test_a_full_owner_is_passed_over_and_its_jobs_keep_their_places() -> None:
    schedule = JobSchedule()
    for job_id, owner, priority in [
        ("a1", "ann", 9),
        ("a2", "ann", 9),
        ("b1", "bob", 0),
        ("a3", "ann", 5),
        ("b2", "bob", 0),
    ]:
        schedule.push(job_id, priority, owner=owner)
    schedule.remove("a2")  # cancelled while parked: never comes back
    assert schedule.pop(full_owners={"ann"}) == "b1"
    assert schedule.pop(full_owners={"ann", "bob"}) is None
    assert len(schedule) == 3  # parked jobs are still queued
    schedule.unpark("ann", 1)  # one of ann's jobs ended: room for one more
    assert [schedule.pop(), schedule.pop()] == ["a1", None]
    assert schedule.parked("ann") and schedule.parked("bob")  # b2: bob was full too
    schedule.unpark("ann", 2)
    schedule.unpark("bob", 2)
    assert [schedule.pop(), schedule.pop(), schedule.pop()] == ["a3", "b2", None]
    assert len(schedule) == 0 and not schedule.parked("ann")


async def test_an_owner_limit_holds_and_other_owners_take_the_free_slots(
    tmp_path: Path,
) -> None:
    release = asyncio.Event()
    running: dict[str, int] = {}
    peaks: dict[str, int] = {}
    registry = Registry()

    @registry.handler("work")
    async def work(ctx: JobContext, params: dict[str, Any]) -> None:
        owner = params["owner"]
        running[owner] = running.get(owner, 0) + 1
        peaks[owner] = max(peaks.get(owner, 0), running[owner])
        try:
            await release.wait()
        finally:
            running[owner] -= 1

    async with embedded(tmp_path, registry, concurrency=4, owner_concurrency=2) as (runner, _):
        ann = [await runner.submit("work", {"owner": "ann"}, "ann", priority=9) for _ in range(5)]
        bob = [await runner.submit("work", {"owner": "bob"}, "bob") for _ in range(3)]
        # ann's five come first, but only two run; bob's take the other two slots
        await eventually(lambda: running.get("ann") == 2 and running.get("bob") == 2)
        assert (await runner.get(ann[2].id)).state is JobState.QUEUED  # type: ignore[union-attr]
        release.set()
        for job in ann + bob:
            assert (await events_until_end(runner, job))[-1].type == "succeeded"
        assert peaks == {"ann": 2, "bob": 2}


def limited_registry(
    release: asyncio.Event, running: dict[str, int], peaks: dict[str, int]
) -> Registry:
    registry = Registry()

    async def work(ctx: JobContext, params: dict[str, Any]) -> None:
        running[ctx.kind] = running.get(ctx.kind, 0) + 1
        peaks[ctx.kind] = max(peaks.get(ctx.kind, 0), running[ctx.kind])
        try:
            await release.wait()
        finally:
            running[ctx.kind] -= 1

    registry.handler("limited", concurrency=2)(work)
    registry.handler("free")(work)
    return registry


async def test_a_kind_limit_holds_and_other_kinds_take_the_free_slots(tmp_path: Path) -> None:
    release = asyncio.Event()
    running: dict[str, int] = {}
    peaks: dict[str, int] = {}
    registry = limited_registry(release, running, peaks)
    async with embedded(tmp_path, registry, concurrency=4) as (runner, _):
        limited = [await runner.submit("limited", {}, "alice", priority=5) for _ in range(6)]
        free = [await runner.submit("free", {}, "alice") for _ in range(2)]
        # the two limited jobs and both free ones run, though four more limited ones come first
        await eventually(lambda: running.get("limited") == 2 and running.get("free") == 2)
        assert (await runner.get(limited[2].id)).state is JobState.QUEUED  # type: ignore[union-attr]
        release.set()
        for job in limited + free:
            assert (await events_until_end(runner, job))[-1].type == "succeeded"
        assert peaks == {"limited": 2, "free": 2}


async def test_priorities_and_a_kind_limit_hold_over_a_thousand_queued_jobs(
    tmp_path: Path,
) -> None:
    """1,000 jobs queued before the runner starts (as after a restart), four slots: each job
    starts only after every queued job of higher priority whose kind had room, and the limited
    kind never has more than 2 running."""
    import random

    from jobcast.jobs.model import Job, new_job_id
    from jobcast.stores import open_store

    rng = random.Random(3)
    store = open_store(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    await store.open()
    jobs = [
        Job(
            id=new_job_id(),
            kind=rng.choice(["limited", "free"]),
            owner="alice",
            priority=rng.randint(-100, 100),
        )
        for _ in range(1000)
    ]
    await asyncio.gather(*(store.create(job) for job in jobs))
    await store.close()

    started: list[str] = []
    running: dict[str, int] = {}
    peaks: dict[str, int] = {}
    registry = Registry()

    async def work(ctx: JobContext, params: dict[str, Any]) -> None:
        started.append(ctx.job_id)
        running[ctx.kind] = running.get(ctx.kind, 0) + 1
        peaks[ctx.kind] = max(peaks.get(ctx.kind, 0), running[ctx.kind])
        await asyncio.sleep(0)  # let the other slots start meanwhile
        running[ctx.kind] -= 1

    registry.handler("limited", concurrency=2)(work)
    registry.handler("free")(work)
    async with embedded(tmp_path, registry, concurrency=4):
        await eventually(lambda: len(started) == 1000, timeout=60)
    assert peaks["limited"] <= 2
    by_id = {job.id: job for job in jobs}
    for kind in ("limited", "free"):  # within a kind: priority, then submission order
        order = [by_id[i] for i in started if by_id[i].kind == kind]
        keys = [(-job.priority, job.id) for job in order]
        assert keys == sorted(keys), kind
