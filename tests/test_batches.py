"""Batches (``POST /api/batches``): all or none, a parent that follows its children and ends
once, after all of them, and cancels them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from jobcast.client import AsyncClient, BadRequest
from tests.jobs_support import watch
from tests.support import LiveServer


async def post_batch(
    client: httpx.AsyncClient, server: LiveServer, body: dict[str, Any], sub: str = "alice"
) -> httpx.Response:
    return await client.post(f"{server.url}/api/batches", json=body, headers=server.auth(sub))


async def listed(client: httpx.AsyncClient, server: LiveServer, **params: Any) -> list[str]:
    response = await client.get(
        f"{server.url}/api/jobs", params=params, headers=server.auth("alice")
    )
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["jobs"]]


async def test_a_batch_ends_once_after_all_its_jobs_with_the_outcome_rule(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    quick = {"kind": "demo", "params": {"steps": 2, "delay": 0.01}}
    failing = {"kind": "demo", "params": {"steps": 2, "delay": 0.01, "fail_at": 1}}
    response = await post_batch(
        client, server, {"jobs": [quick, quick, failing], "tags": ["upload-9"]}
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["kind"] == "batch" and batch["state"] == "running"
    counts = {"succeeded": 0, "failed": 0, "cancelled": 0, "total": 3}
    # the counts where a spawning parent has them too, and where a batch always had them
    assert batch["metadata"] == {**counts, "children": {**counts, "allow_failures": False}}
    children = [job["id"] for job in batch["jobs"]]
    assert all(job["parent_id"] == batch["id"] for job in batch["jobs"])

    events = await watch(client, server, batch["id"])
    assert [kind for kind, _ in events].count("failed") == 1 and events[-1][0] == "failed"
    final = events[-1][1]
    assert final["result"] == {"succeeded": 2, "failed": 1, "cancelled": 0, "total": 3}
    assert final["error"]["type"] == "BatchFailed" and final["progress"] == 100.0
    assert final["metadata"]["children"] == {**final["result"], "allow_failures": False}
    progress = [data["progress"] for _, data in events]
    assert progress == sorted(progress)  # published in count order (sql.Q10)
    seqs = [data["seq"] for _, data in events]
    assert seqs == sorted(set(seqs))
    for child in children:  # each child ended before the batch did
        child_events = await watch(client, server, child)
        assert child_events[-1][1]["finished_at"] <= final["finished_at"]
    assert sorted(await listed(client, server, parent=batch["id"])) == sorted(children)
    assert batch["id"] in await listed(client, server, tag="upload-9")

    allowed = await post_batch(client, server, {"jobs": [failing], "allow_failures": True})
    ended = await watch(client, server, allowed.json()["id"])
    assert ended[-1][0] == "succeeded" and ended[-1][1]["result"]["failed"] == 1
    assert ended[-1][1]["metadata"]["children"]["allow_failures"] is True


async def test_a_bad_item_creates_nothing_and_cancelling_a_batch_cancels_its_jobs(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    before = await listed(client, server)
    bad = await post_batch(
        client, server, {"jobs": [{"kind": "demo"}, {"kind": "demo", "params": {"steps": "x"}}]}
    )
    assert bad.status_code == 422 and bad.json()["message"].startswith("jobs[1]:")
    assert (await post_batch(client, server, {"jobs": []})).status_code == 422
    unknown = await post_batch(client, server, {"jobs": [{"kind": "nope"}]})
    assert unknown.status_code in (404, 422)
    assert await listed(client, server) == before  # all or none

    slow = {"kind": "wait_cancel"}
    batch = (await post_batch(client, server, {"jobs": [slow, slow]})).json()
    cancelled = await client.post(
        f"{server.url}/api/jobs/{batch['id']}/cancel", headers=server.auth("alice")
    )
    assert cancelled.status_code == 200, cancelled.text
    events = await watch(client, server, batch["id"])
    assert events[-1][0] == "cancelled"
    assert events[-1][1]["result"] == {"succeeded": 0, "failed": 0, "cancelled": 2, "total": 2}
    for child in batch["jobs"]:
        assert (await watch(client, server, child["id"]))[-1][0] == "cancelled"
    other = await client.get(f"{server.url}/api/jobs/{batch['id']}", headers=server.auth("bob"))
    assert other.status_code == 404  # a batch is its owner's, as any job


async def test_the_python_client_submits_a_batch_and_lists_its_jobs(
    make_server: Callable[..., LiveServer],
) -> None:
    server = make_server(handlers=["tests.handlers"])
    async with AsyncClient(server.url, token=server.token("alice")) as jobs:
        items = [{"kind": "demo", "params": {"steps": 1, "delay": 0}} for _ in range(3)]
        batch = await jobs.submit_batch(items, tags=["nightly"], metadata={"source": "cron"})
        assert batch.kind == "batch" and batch.metadata["total"] == 3
        done = await jobs.wait(batch.id, timeout=10)
        assert done.state.value == "succeeded" and done.result["succeeded"] == 3
        children = (await jobs.list(parent=batch.id)).jobs
        assert len(children) == 3 and all(job.parent_id == batch.id for job in children)
        with pytest.raises(BadRequest):
            await jobs.submit_batch([])
