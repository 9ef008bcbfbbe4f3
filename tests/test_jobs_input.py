"""Input to a running job: the waiting request, validation, one winner, timeouts, restarts."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from jobcast.client import AsyncClient, BadRequest, ConflictError, Event, NotFoundError
from tests.jobs_support import submit, wait_running, watch
from tests.scale_support import processes
from tests.support import EventStream, LiveServer, eventually


async def until_waiting(
    client: httpx.AsyncClient, server: LiveServer, job_id: str, name: str
) -> dict[str, Any]:
    """The job's snapshot once it waits for ``name`` (from its stream: no sleeping)."""
    async with EventStream(
        client, f"{server.url}/api/jobs/{job_id}/events", headers=server.auth("alice")
    ) as stream:
        async with asyncio.timeout(10):
            while True:
                event = await stream.next()
                data = orjson.loads(event.data or "null")
                if (
                    event.event in ("snapshot", "waiting")
                    and (data["waiting"] or {}).get("name") == name
                ):
                    return dict(data)


async def give(
    client: httpx.AsyncClient, server: LiveServer, job_id: str, body: Any, sub: str = "alice"
) -> httpx.Response:
    return await client.post(
        f"{server.url}/api/jobs/{job_id}/input", json=body, headers=server.auth(sub)
    )


async def test_a_bad_value_changes_nothing_and_of_two_answers_one_wins(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    job = await submit(client, server, "approval")
    waiting = await until_waiting(client, server, job["id"], "approve")
    request = waiting["waiting"]
    assert waiting["state"] == "running"
    assert request["prompt"] == "Publish the summary?"
    assert request["schema"]["properties"]["approved"]["type"] == "boolean"

    refused = await give(client, server, job["id"], {"name": "approve", "value": {"approved": 3}})
    assert refused.status_code == 422, refused.text
    assert "approved" in refused.json()["message"]
    assert (await give(client, server, job["id"], {"name": "other", "value": 1})).status_code == 409
    assert (await give(client, server, job["id"], {"value": 1})).status_code == 422
    bob = await give(
        client, server, job["id"], {"name": "approve", "value": {"approved": True}}, "bob"
    )
    assert bob.status_code == 404  # not his job
    polled = await client.get(f"{server.url}/api/jobs/{job['id']}", headers=server.auth("alice"))
    assert polled.json()["waiting"]["name"] == "approve"  # still waiting: nothing changed
    assert polled.json()["inputs"] == {}

    answers = [
        {"name": "approve", "value": {"approved": True, "note": "first"}},
        {"name": "approve", "value": {"approved": False, "note": "second"}},
    ]
    responses = await asyncio.gather(*(give(client, server, job["id"], a) for a in answers))
    assert sorted(r.status_code for r in responses) == [202, 409]
    winner = answers[[r.status_code for r in responses].index(202)]["value"]

    events = await watch(client, server, job["id"])
    assert events[-1][0] == "succeeded"
    assert events[-1][1]["result"] == winner
    assert events[-1][1]["inputs"] == {"approve": winner}
    assert events[-1][1]["waiting"] is None
    late = await give(client, server, job["id"], answers[0])
    assert late.status_code == 409


async def test_a_waiting_job_holds_no_slot_and_timeouts_follow_the_handler(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"], job_concurrency=1)
    waiting = await submit(client, server, "approval")
    await until_waiting(client, server, waiting["id"], "approve")
    other = await submit(client, server, "demo", {"steps": 1, "delay": 0})
    done = await watch(client, server, other["id"])  # runs in the slot the waiting job gave back
    assert done[-1][0] == "succeeded"
    answer = {"name": "approve", "value": {"approved": True}}
    assert (await give(client, server, waiting["id"], answer)).status_code == 202
    assert (await watch(client, server, waiting["id"]))[-1][0] == "succeeded"

    defaulted = await submit(client, server, "approval", {"timeout": 0.2, "default": True})
    ended = await watch(client, server, defaulted["id"])
    assert ended[-1][0] == "succeeded" and ended[-1][1]["result"] == {"approved": None}
    assert [t for t, _ in ended].count("waiting") <= 1 and ended[-1][1]["waiting"] is None
    timed_out = await submit(client, server, "approval", {"timeout": 0.2})
    ended = await watch(client, server, timed_out["id"])
    assert ended[-1][0] == "failed"
    assert ended[-1][1]["error"]["type"] == "InputTimeout"
    assert ended[-1][1]["attempts"] == 1  # not retried: nobody answered


async def test_a_restart_re_runs_the_handler_with_the_given_inputs_replayed(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    job = await submit(client, server, "approval", {"second": True})
    await until_waiting(client, server, job["id"], "approve")
    answer = {"name": "approve", "value": {"approved": True, "note": "ok"}}
    assert (await give(client, server, job["id"], answer)).status_code == 202
    speaker_asked = await until_waiting(client, server, job["id"], "speaker")
    server.stop()  # stopped while waiting: retry_safe, so it stays parked (lifecycle.R5)

    restarted = make_server(handlers=["tests.handlers"])
    again = await until_waiting(client, restarted, job["id"], "speaker")  # not "approve"
    assert again["attempts"] == 1  # parked by the shutdown, not interrupted (N8)
    assert again["waiting"]["timeout_at"] == speaker_asked["waiting"]["timeout_at"]
    assert again["inputs"] == {"approve": {"approved": True, "note": "ok"}}
    bad = await give(client, restarted, job["id"], {"name": "speaker", "value": "carl"})
    assert bad.status_code == 422 and "carl" in bad.json()["message"]
    speaker = {"name": "speaker", "value": "anna"}
    assert (await give(client, restarted, job["id"], speaker)).status_code == 202
    events = await watch(client, restarted, job["id"])
    assert events[-1][1]["result"] == {"approved": True, "note": "ok", "speaker": "anna"}


async def test_the_python_client_submits_tags_watches_a_list_and_gives_input(
    make_server: Callable[..., LiveServer],
) -> None:
    server = make_server(handlers=["tests.handlers"])
    async with AsyncClient(server.url, token=server.token("alice")) as jobs:
        items = jobs.watch_jobs(tag=["review"], state=["running", "succeeded"])
        first = await anext(items)
        assert (first.type, first.data) == ("synced", {"count": 0})
        job = await jobs.submit("approval", tags=["review"], metadata={"doc": "a.pdf"})
        assert job.tags == ["review"] and job.metadata == {"doc": "a.pdf"}
        async with asyncio.timeout(10):
            async for item in items:
                assert isinstance(item, Event) and item.type == "snapshot"
                if item.data["waiting"] is not None:
                    break
        with pytest.raises(BadRequest):
            await jobs.give_input(job.id, "approve", {"approved": "maybe"})
        await jobs.give_input(job.id, "approve", {"approved": True})
        with pytest.raises(ConflictError):
            await jobs.give_input(job.id, "approve", {"approved": False})
        done = await jobs.wait(job.id, timeout=10)
        assert done.result == {"approved": True, "note": ""} and done.inputs["approve"]
        assert [j.id for j in (await jobs.list(tag="review")).jobs] == [job.id]
        await items.aclose()


async def test_cancelling_a_waiting_job_ends_it_and_leaves_the_slots_as_they_were(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"], job_concurrency=1)
    job = await submit(client, server, "approval")
    await until_waiting(client, server, job["id"], "approve")
    cancelled = await client.post(
        f"{server.url}/api/jobs/{job['id']}/cancel", headers=server.auth("alice")
    )
    assert cancelled.status_code == 200
    events = await watch(client, server, job["id"])
    assert events[-1][0] == "cancelled" and events[-1][1]["waiting"] is None
    late = await give(client, server, job["id"], {"name": "approve", "value": {"approved": True}})
    assert late.status_code == 409
    # one slot, neither lost nor doubled: two jobs still run one after the other
    first = await submit(client, server, "wait_cancel")
    second = await submit(client, server, "demo", {"steps": 1, "delay": 0})
    await wait_running(client, server, first["id"])
    polled = await client.get(f"{server.url}/api/jobs/{second['id']}", headers=server.auth())
    assert polled.json()["state"] == "queued"  # the only slot is taken
    await client.post(f"{server.url}/api/jobs/{first['id']}/cancel", headers=server.auth())
    assert (await watch(client, server, second["id"]))[-1][0] == "succeeded"


async def test_a_sync_handler_waits_for_input_in_its_thread_and_can_be_cancelled(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    job = await submit(client, server, "sync_approval")
    waiting = await until_waiting(client, server, job["id"], "approve")
    assert waiting["waiting"]["schema"]["properties"]["approved"]["type"] == "boolean"
    refused = await give(client, server, job["id"], {"name": "approve", "value": {"approved": 1}})
    assert refused.status_code == 422
    given = await give(client, server, job["id"], {"name": "approve", "value": {"approved": True}})
    assert given.status_code == 202, given.text
    events = await watch(client, server, job["id"])
    assert events[-1][0] == "succeeded"
    assert events[-1][1]["result"] == {"approved": True, "speaker": "-"}  # its default, in time
    assert events[-1][1]["inputs"] == {"approve": {"approved": True}}

    stuck = await submit(client, server, "sync_approval")
    await until_waiting(client, server, stuck["id"], "approve")
    cancelled = await client.post(
        f"{server.url}/api/jobs/{stuck['id']}/cancel", headers=server.auth("alice")
    )
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    after = await submit(client, server, "demo", {"steps": 1, "delay": 0})
    assert (await watch(client, server, after["id"]))[-1][0] == "succeeded"  # its slot is free


async def test_a_reader_gives_input_only_when_shared_with_input(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    job = await submit(client, server, "approval")
    await until_waiting(client, server, job["id"], "approve")
    readers = f"{server.url}/api/jobs/{job['id']}/readers"
    answer = {"name": "approve", "value": {"approved": True, "note": "by carol"}}

    assert (await client.put(f"{readers}/carol", headers=server.auth("alice"))).status_code == 200
    refused = await give(client, server, job["id"], answer, "carol")
    assert refused.status_code == 403, refused.text  # she reads it; answering is not hers
    assert "input" in refused.json()["message"]

    shared = await client.put(
        f"{readers}/carol", params={"input": "true"}, headers=server.auth("alice")
    )
    assert shared.status_code == 200 and "carol" in shared.json()["readers"]
    assert (await give(client, server, job["id"], answer, "carol")).status_code == 202
    events = await watch(client, server, job["id"])
    assert events[-1][0] == "succeeded" and events[-1][1]["result"]["note"] == "by carol"

    # withdrawing the share takes the permission with it; sharing again restores only reading
    second = await submit(client, server, "approval")
    await until_waiting(client, server, second["id"], "approve")
    readers = f"{server.url}/api/jobs/{second['id']}/readers"
    await client.put(f"{readers}/carol", params={"input": "true"}, headers=server.auth("alice"))
    assert (
        await client.delete(f"{readers}/carol", headers=server.auth("alice"))
    ).status_code == 200
    assert (await give(client, server, second["id"], answer, "carol")).status_code == 404
    await client.put(f"{readers}/carol", headers=server.auth("alice"))
    assert (await give(client, server, second["id"], answer, "carol")).status_code == 403
    bad = await client.put(
        f"{readers}/carol", params={"input": "maybe"}, headers=server.auth("alice")
    )
    assert bad.status_code == 422


async def test_the_python_client_shares_a_job_with_input_and_withdraws_it(
    make_server: Callable[..., LiveServer],
) -> None:
    server = make_server(handlers=["tests.handlers"])
    async with (
        AsyncClient(server.url, token=server.token("alice")) as alice,
        AsyncClient(server.url, token=server.token("carol d")) as carol,
    ):
        job = await alice.submit("approval", {})
        shared = await alice.share(job.id, "carol d", input=True)  # a subject with a space
        assert shared.id == job.id

        async def waiting() -> bool:
            return (await carol.get(job.id)).waiting is not None  # she reads it

        await eventually(waiting, timeout=10)
        await carol.give_input(job.id, "approve", {"approved": True})
        assert (await carol.wait(job.id, timeout=10)).result["approved"] is True
        await alice.unshare(job.id, "carol d")
        with pytest.raises(NotFoundError):
            await carol.get(job.id)


async def test_a_re_runnable_sync_handler_parks_and_frees_its_thread_and_slot(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    """input_wait.N7: with one slot, a job queued after the parked one runs while it waits;
    the answer re-runs the parked one, in the same attempt, with one waiting/resumed pair."""
    server = make_server(handlers=["tests.handlers"], job_concurrency=1)
    parked = await submit(client, server, "sync_park")
    whole = asyncio.create_task(watch(client, server, parked["id"], timeout=20))
    waiting = await until_waiting(client, server, parked["id"], "approve")
    assert waiting["state"] == "running"
    other = await submit(client, server, "demo", {"steps": 1, "delay": 0})
    assert (await watch(client, server, other["id"]))[-1][0] == "succeeded"
    polled = await client.get(f"{server.url}/api/jobs/{parked['id']}", headers=server.auth())
    assert polled.json()["state"] == "running" and polled.json()["waiting"]["name"] == "approve"

    given = await give(client, server, parked["id"], {"name": "approve", "value": True})
    assert given.status_code == 202, given.text
    events = await whole
    types = [t for t, _ in events]
    assert types[-1] == "succeeded", types
    assert events[-1][1]["result"] == {"approved": True, "attempt": 1}
    assert events[-1][1]["attempts"] == 1 and events[-1][1]["inputs"] == {"approve": True}
    # asked once (the stream's snapshot may already show the request), resumed once
    asked = types.index("waiting") if "waiting" in types else 0
    assert types.count("waiting") + (events[0][1]["waiting"] is not None) == 1, types
    assert types.count("resumed") == 1 and asked < types.index("resumed"), types
    assert "state" not in types[asked:], types  # no second start


async def test_a_parked_job_s_timeout_fires_with_and_without_a_default(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"], job_concurrency=1)
    defaulted = await submit(client, server, "sync_park", {"timeout": 0.5, "default": False})
    timed_out = await submit(client, server, "sync_park", {"timeout": 0.5})
    ended = await watch(client, server, defaulted["id"])
    assert ended[-1][0] == "succeeded", ended[-1]
    assert ended[-1][1]["result"] == {"approved": False, "attempt": 1}
    assert ended[-1][1]["waiting"] is None and ended[-1][1]["attempts"] == 1
    ended = await watch(client, server, timed_out["id"])
    assert ended[-1][0] == "failed" and ended[-1][1]["error"]["type"] == "InputTimeout"
    assert ended[-1][1]["attempts"] == 1


async def test_an_answer_past_timeout_at_is_refused_with_409_and_not_stored(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    # One slot, held by a job that runs until cancelled: the parked job's timeout wake
    # (input_wait.N10) cannot run it, so it still shows its request after ``timeout_at``.
    server = make_server(handlers=["tests.handlers"], job_concurrency=1)
    job = await submit(client, server, "sync_park", {"timeout": 2})
    asked = await until_waiting(client, server, job["id"], "approve")
    blocker = await submit(client, server, "wait_cancel")
    await wait_running(client, server, blocker["id"], stage="waiting")
    timeout_at = float(asked["waiting"]["timeout_at"])
    await eventually(lambda: time.time() > timeout_at + 0.05, timeout=5)
    polled = await client.get(f"{server.url}/api/jobs/{job['id']}", headers=server.auth())
    assert polled.json()["state"] == "running"
    assert polled.json()["waiting"]["name"] == "approve"  # still shown as waiting

    late = await give(client, server, job["id"], {"name": "approve", "value": True})
    assert late.status_code == 409, late.text
    assert "timed out" in late.json()["message"]
    assert "Traceback" not in late.text
    async with AsyncClient(server.url, token=server.token("alice")) as api:
        with pytest.raises(ConflictError):
            await api.give_input(job["id"], "approve", True)

    cancelled = await client.post(
        f"{server.url}/api/jobs/{blocker['id']}/cancel", headers=server.auth("alice")
    )
    assert cancelled.status_code == 200, cancelled.text
    ended = await watch(client, server, job["id"])
    # The refused answer was not stored: the re-run's wait timed out (N4), no value replayed.
    assert ended[-1][0] == "failed" and ended[-1][1]["error"]["type"] == "InputTimeout"
    assert ended[-1][1]["inputs"] == {}


async def test_cancelling_a_parked_job_ends_it_without_a_run(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"], job_concurrency=1)
    job = await submit(client, server, "sync_park", {"stream": True})
    await until_waiting(client, server, job["id"], "approve")
    cancelled = await client.post(
        f"{server.url}/api/jobs/{job['id']}/cancel", headers=server.auth("alice")
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled" and cancelled.json()["waiting"] is None
    assert cancelled.json()["message"] == "cancelled"
    polled = await client.get(f"{server.url}/api/jobs/{job['id']}", headers=server.auth())
    assert [s["closed"] for s in polled.json()["streams"]] == [True]  # closed with its end
    late = await give(client, server, job["id"], {"name": "approve", "value": True})
    assert late.status_code == 409
    after = await submit(client, server, "demo", {"steps": 1, "delay": 0})
    assert (await watch(client, server, after["id"]))[-1][0] == "succeeded"  # its slot is free


async def test_a_parked_job_survives_a_sigkill_of_its_server(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """input_wait.N8: nothing holds a parked job, so a server killed with SIGKILL leaves it
    stored as it waits; the next start keeps it parked and the answer resumes it."""
    data_dir = tmp_path / "app"
    minting = make_server(data_dir=tmp_path / "tokens")  # the same secret: its tokens do
    auth = minting.auth("alice")
    with processes(tmp_path) as procs:
        base = procs.serve("app", data_dir=data_dir, handlers="tests.handlers")
        response = await client.post(
            f"{base}/api/jobs", json={"kind": "sync_park", "params": {}}, headers=auth
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]

        async def parked() -> bool:
            polled = await client.get(f"{base}/api/jobs/{job_id}", headers=auth)
            return (polled.json()["waiting"] or {}).get("name") == "approve"

        await eventually(parked, timeout=10)
        procs.stop(procs.started[-1], signal.SIGKILL)

    restarted = make_server(data_dir=data_dir, handlers=["tests.handlers"])
    again = await until_waiting(client, restarted, job_id, "approve")
    assert again["state"] == "running" and again["attempts"] == 1
    given = await give(client, restarted, job_id, {"name": "approve", "value": True})
    assert given.status_code == 202, given.text
    events = await watch(client, restarted, job_id)
    assert events[-1][0] == "succeeded"
    assert events[-1][1]["result"] == {"approved": True, "attempt": 1}
