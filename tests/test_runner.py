"""The embedded runner across restarts: nothing is ever left running."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import httpx

from jobcast.jobs.model import Job, JobState, new_job_id
from jobcast.stores import open_store
from tests.jobs_support import submit, wait_running, watch
from tests.support import LiveServer


async def test_restart_mid_job_fails_unsafe_jobs_and_requeues_safe_ones(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    unsafe = await submit(client, server, "wait_cancel")
    safe = await submit(client, server, "demo", {"steps": 3, "delay": 0.2})
    await wait_running(client, server, unsafe["id"])
    await wait_running(client, server, safe["id"])
    server.stop()

    restarted = make_server(handlers=["tests.handlers"])
    failed = await watch(client, restarted, unsafe["id"])
    assert [t for t, _ in failed] == ["snapshot", "failed"]
    error = failed[-1][1]["error"]
    assert error["type"] == "Interrupted"
    assert "not marked retry_safe" in error["message"]

    done = await watch(client, restarted, safe["id"])
    assert done[-1][0] == "succeeded"
    assert done[-1][1]["attempts"] == 2


async def test_crash_recovery_at_startup(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Jobs a crashed process left ``running`` (written straight to the store)."""
    store = open_store(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    await store.open()

    def job(kind: str, state: JobState, attempts: int, **params: object) -> Job:
        return dataclasses.replace(
            Job(id=new_job_id(), kind=kind, owner="alice", params=dict(params)),
            state=state,
            attempts=attempts,
        )

    unsafe = job("wait_cancel", JobState.RUNNING, 1)
    safe = job("demo", JobState.RUNNING, 1, steps=1, delay=0.0)
    worn_out = job("demo", JobState.RUNNING, 3, steps=1, delay=0.0)
    queued = job("demo", JobState.QUEUED, 0, steps=2, delay=0.0)
    for item in (unsafe, safe, worn_out, queued):
        await store.create(item)
    await store.close()

    server = make_server(handlers=["tests.handlers"])
    results = {
        item.id: (await watch(client, server, item.id))[-1]
        for item in (unsafe, safe, worn_out, queued)
    }
    assert results[unsafe.id][0] == "failed"
    assert results[unsafe.id][1]["error"]["type"] == "Interrupted"
    assert results[safe.id][0] == "succeeded"
    assert results[safe.id][1]["attempts"] == 2
    assert results[worn_out.id][0] == "failed"
    assert "already tried 3 times" in results[worn_out.id][1]["error"]["message"]
    assert results[queued.id][0] == "succeeded"
    listed = await client.get(
        f"{server.url}/api/jobs", params={"state": "running"}, headers=server.auth()
    )
    assert listed.json()["jobs"] == []
