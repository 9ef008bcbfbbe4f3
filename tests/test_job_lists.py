"""Live job lists (``GET /api/jobs/live``): the current matching jobs, then their changes,
never another user's job."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import connect

from jobcast.jobs.model import Job, JobState, new_job_id
from jobcast.jobs.snapshots import JobSnapshots
from jobcast.stores import open_store
from tests.jobs_support import watch
from tests.support import EventStream, LiveServer, eventually
from tests.ws_support import receive, receive_until_closed


async def submit(
    client: httpx.AsyncClient, server: LiveServer, sub: str, kind: str, **body: Any
) -> dict[str, Any]:
    body.setdefault("params", {"steps": 1, "delay": 0} if kind == "demo" else {})
    response = await client.post(
        f"{server.url}/api/jobs", json={"kind": kind, **body}, headers=server.auth(sub)
    )
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


async def next_event(stream: EventStream) -> tuple[str, Any]:
    event = await stream.next(timeout=10)
    return event.event or "", orjson.loads(event.data or "null")


async def until(stream: EventStream, done: Callable[[str, Any], bool]) -> list[tuple[str, Any]]:
    seen = []
    async with asyncio.timeout(10):
        while True:
            seen.append(await next_event(stream))
            if done(*seen[-1]):
                return seen


async def test_a_list_starts_with_the_matching_jobs_then_follows_them(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    old = await submit(client, server, "alice", "demo", tags=["batch-7", "customer:42"])
    await submit(client, server, "alice", "demo", tags=["batch-8"])
    async with EventStream(
        client,
        f"{server.url}/api/jobs/live",
        params={"tag": "batch-7", "state": ["queued", "running", "succeeded"]},
        headers=server.auth("alice"),
    ) as stream:
        opening = await until(stream, lambda kind, _: kind == "synced")
        assert [(k, d["id"]) for k, d in opening[:-1]] == [("snapshot", old["id"])]
        assert opening[-1][1] == {"count": 1}

        new = await submit(client, server, "alice", "demo", tags=["batch-7"], metadata={"n": 1})
        await submit(client, server, "alice", "demo", tags=["batch-8"])  # not listed
        seen = await until(
            stream, lambda kind, data: data["id"] == new["id"] and data["state"] == "succeeded"
        )
        assert {data["id"] for _, data in seen} == {new["id"]}
        assert all(kind == "snapshot" for kind, _ in seen)
        states = [data["state"] for _, data in seen]
        assert states[0] == "queued" and states[-1] == "succeeded"
        assert all(data["metadata"] == {"n": 1} for _, data in seen)  # whole jobs
        seqs = [data["seq"] for _, data in seen]
        assert seqs == sorted(set(seqs))  # no repeats, in order

    # a state filter: a job that leaves it is removed
    async with EventStream(
        client,
        f"{server.url}/api/jobs/live",
        params={"tag": "slow-one", "state": ["queued", "running"]},
        headers=server.auth("alice"),
    ) as stream:
        assert await next_event(stream) == ("synced", {"count": 0})
        job = await submit(client, server, "alice", "wait_cancel", tags=["slow-one"])
        await until(stream, lambda kind, data: data.get("state") == "running")
        cancelled = await client.post(
            f"{server.url}/api/jobs/{job['id']}/cancel", headers=server.auth("alice")
        )
        assert cancelled.status_code == 200
        _, data = (await until(stream, lambda kind, _: kind == "removed"))[-1]
        assert data == {"id": job["id"], "reason": "filter"}

    bad = await client.get(
        f"{server.url}/api/jobs/live", params={"tag": "a b"}, headers=server.auth("alice")
    )
    assert bad.status_code == 422
    assert (await client.get(f"{server.url}/api/jobs/live")).status_code == 401


async def test_a_list_never_shows_another_user_s_job_even_shared_then_unshared(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"], heartbeat_interval=0.2)
    await submit(client, server, "alice", "demo", tags=["shared"])  # alice's, before
    async with EventStream(
        client,
        f"{server.url}/api/jobs/live",
        params={"tag": "shared"},
        headers=server.auth("bob"),
    ) as stream:
        assert await next_event(stream) == ("synced", {"count": 0})
        # alice's job with the same tag: bob sees it only once it is shared with him
        job = await submit(
            client, server, "alice", "wait_cancel", tags=["shared"], delay_seconds=0.5
        )
        granted = await client.put(
            f"{server.url}/api/jobs/{job['id']}/readers/bob", headers=server.auth("alice")
        )
        assert granted.status_code == 200
        seen = await until(stream, lambda kind, data: data.get("state") == "running")
        assert {data["id"] for _, data in seen} == {job["id"]}

        revoked = await client.delete(
            f"{server.url}/api/jobs/{job['id']}/readers/bob", headers=server.auth("alice")
        )
        assert revoked.status_code == 200
        seen = await until(stream, lambda kind, _: kind == "removed")
        assert seen[-1][1] == {"id": job["id"], "reason": "access"}
        assert {data["id"] for _, data in seen} == {job["id"]}  # its progress, while shared

        # its end, and another job of alice's with the tag, never reach bob
        await client.post(f"{server.url}/api/jobs/{job['id']}/cancel", headers=server.auth("alice"))
        await submit(client, server, "alice", "demo", tags=["shared"])
        own = await submit(client, server, "bob", "demo", tags=["shared"])
        seen = await until(
            stream, lambda kind, data: data.get("id") == own["id"] and data["state"] == "succeeded"
        )
        assert {data["id"] for _, data in seen} == {own["id"]}


async def test_a_job_shared_while_a_list_is_open_appears_at_once(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"], heartbeat_interval=0.2)
    running = await submit(client, server, "alice", "wait_cancel", tags=["team"])
    done = await submit(client, server, "alice", "demo", tags=["team"])
    await eventually(lambda: _state(client, server, running["id"], "running"))
    await eventually(lambda: _state(client, server, done["id"], "succeeded"))
    async with EventStream(
        client, f"{server.url}/api/jobs/live", params={"tag": "team"}, headers=server.auth("bob")
    ) as stream:
        assert await next_event(stream) == ("synced", {"count": 0})
        for job in (running, done):  # neither changes again: the grant alone shows it
            granted = await client.put(
                f"{server.url}/api/jobs/{job['id']}/readers/bob", headers=server.auth("alice")
            )
            assert granted.status_code == 200
            kind, data = await next_event(stream)
            assert kind == "snapshot" and data["id"] == job["id"] and "bob" in data["readers"]
        # the job's own stream is unchanged by it: no event after its terminal one
        events = await watch(client, server, done["id"])
        assert [kind for kind, _ in events][-1] == "succeeded"
        await client.post(
            f"{server.url}/api/jobs/{running['id']}/cancel", headers=server.auth("alice")
        )
        seen = await until(stream, lambda _, data: data.get("state") == "cancelled")
        assert {data["id"] for _, data in seen} == {running["id"]}


async def _state(client: httpx.AsyncClient, server: LiveServer, job_id: str, state: str) -> bool:
    response = await client.get(f"{server.url}/api/jobs/{job_id}", headers=server.auth("alice"))
    return bool(response.json()["state"] == state)


async def test_a_live_list_over_a_websocket(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"], heartbeat_interval=0.2, ws_auth_timeout=1)
    base = f"ws://{server.host}:{server.port}/ws/jobs"
    old = await submit(client, server, "alice", "demo", tags=["ws"])
    await submit(client, server, "bob", "demo", tags=["ws"])  # never alice's to see
    async with connect(f"{base}?tag=ws&token={server.token('alice')}") as ws:
        opening = [await receive(ws), await receive(ws)]
        assert [(m["type"], m["data"]["id"]) for m in opening[:1]] == [("snapshot", old["id"])]
        assert opening[1] == {"type": "synced", "id": None, "data": {"count": 1}}
        new = await submit(client, server, "alice", "demo", tags=["ws"])
        async with asyncio.timeout(10):
            while True:
                message = await receive(ws)
                if message.get("op") == "ping":
                    continue
                assert message["type"] == "snapshot" and message["data"]["id"] == new["id"]
                if message["data"]["state"] == "succeeded":
                    break
    async with connect(f"{base}?tag=a%20b&token={server.token('alice')}") as ws:
        refused = await receive_until_closed(ws)
        assert ws.close_code == 4422 and "a tag is" in refused[0]["message"]
    async with connect(base) as ws:  # no credential, and none sent within ws_auth_timeout
        await receive_until_closed(ws)
        assert ws.close_code == 4401


async def test_a_list_of_more_than_a_thousand_jobs_opens_with_all_and_shares_their_snapshots(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    store = open_store(server.jc.runtime.settings.resolved_store_url)  # the server's own file
    await store.open()
    try:
        for first in range(0, 1200, 300):
            jobs = []
            for index in range(first, first + 300):
                job = Job(id=new_job_id(), kind="demo", owner="alice", tags=["many"])
                job.state = JobState.SUCCEEDED
                job.metadata = {"index": index}
                jobs.append(store.create(job))
            await asyncio.gather(*jobs)
    finally:
        await store.close()
    await submit(client, server, "bob", "demo", tags=["many"])  # never alice's to see
    snapshots = server.jc.runtime.job_snapshots
    url = f"{server.url}/api/jobs/live"
    params = {"tag": "many", "limit": "10000"}
    async with (
        EventStream(client, url, params=params, headers=server.auth("alice")) as one,
        EventStream(client, url, params=params, headers=server.auth("alice")) as two,
    ):
        for stream in (one, two):
            opening = await until(stream, lambda kind, _: kind == "synced")
            assert opening[-1] == ("synced", {"count": 1200})
            indexes = [data["metadata"]["index"] for _, data in opening[:-1]]
            assert sorted(indexes) == list(range(1200))  # all of them, each once
        assert len(snapshots) == 1200  # one per job, shared by both lists (snapshots.S1)
    # the last list closed: nothing is held for it any more (snapshots.S3)
    await eventually(lambda: gc.collect() >= 0 and len(snapshots) == 0)

    too_many = await client.get(
        url, params={"tag": "many", "limit": "10001"}, headers=server.auth("alice")
    )
    assert too_many.status_code == 422


def test_a_shared_snapshot_is_only_ever_the_one_a_list_computed_itself() -> None:
    table = JobSnapshots()
    first = table.share({"id": "j1", "seq": 5, "readers": []})
    again = table.share({"id": "j1", "seq": 5, "readers": []})
    assert again is first and len(table) == 1
    # the same seq with another content (a grant changes readers): never swapped for it
    granted = table.share({"id": "j1", "seq": 5, "readers": ["bob"]})
    assert granted is not first and granted["readers"] == ["bob"]
    # a lagging list keeps its older version; the table keeps the newest
    newer = table.share({"id": "j1", "seq": 9, "readers": []})
    older = table.share({"id": "j1", "seq": 6, "readers": []})
    assert older["seq"] == 6 and table.share({"id": "j1", "seq": 9, "readers": []}) is newer
    assert orjson.loads(newer.json) == newer
    assert newer.opening_frame == b"event: snapshot\ndata: " + newer.json.encode() + b"\n\n"
    del first, again, granted, newer, older
    gc.collect()
    assert len(table) == 0  # held only while a list holds it
