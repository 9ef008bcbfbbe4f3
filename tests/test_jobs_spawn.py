"""Children spawned by a running handler (``ctx.spawn``, jobs/spawn.py) and batches' progress
weighted by their children's: a parent ends once, after its handler and every child."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.jobs_support import submit, watch
from tests.support import LiveServer, eventually


async def children_of(
    client: httpx.AsyncClient, server: LiveServer, parent_id: str
) -> list[dict[str, Any]]:
    response = await client.get(
        f"{server.url}/api/jobs", params={"parent": parent_id}, headers=server.auth("alice")
    )
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs


async def snapshot(client: httpx.AsyncClient, server: LiveServer, job_id: str) -> dict[str, Any]:
    response = await client.get(f"{server.url}/api/jobs/{job_id}", headers=server.auth("alice"))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def counts(allow_failures: bool = False, **ended: int) -> dict[str, Any]:
    """A parent's ``children`` metadata entry (batches.G9)."""
    by_state = {"succeeded": 0, "failed": 0, "cancelled": 0, **ended}
    return {**by_state, "allow_failures": allow_failures}


def demo(steps: int = 3, delay: float = 0.05, **extra: Any) -> dict[str, Any]:
    return {"kind": "demo", "params": {"steps": steps, "delay": delay, **extra}}


async def test_a_parent_ends_once_after_its_handler_and_every_child(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    parent = await submit(client, server, "fan_out", {"children": [demo(), demo(), demo()]})
    events = await watch(client, server, parent["id"], timeout=15)
    types = [kind for kind, _ in events]
    assert types.count("succeeded") == 1 and types[-1] == "succeeded", types
    final = events[-1][1]
    assert final["result"] == {"spawned": 3}  # its handler's own result
    assert final["metadata"] == {"children": counts(succeeded=3, total=3)}
    assert final["progress"] == 100.0
    progress = [data["progress"] for kind, data in events if "progress" in data]
    assert progress == sorted(progress)  # never backwards, across the hand-over
    seqs = [data["seq"] for _, data in events]
    assert seqs == sorted(set(seqs))
    children = await children_of(client, server, parent["id"])
    assert len(children) == 3
    for child in children:
        assert child["owner"] == "alice" and child["tags"] == ["child"]
        assert child["state"] == "succeeded"
        assert child["finished_at"] <= final["finished_at"]

    # Children that all ended before the handler returned: it ends at once, counted.
    held = await submit(client, server, "fan_out", {"children": [demo(1, 0)] * 2, "hold": 1})
    events = await watch(client, server, held["id"], timeout=15)
    assert events[-1][0] == "succeeded" and events[-1][1]["metadata"]["children"]["succeeded"] == 2


async def test_a_failed_child_or_handler_fails_the_parent_after_the_children(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    failing = demo(2, 0.01, fail_at=1)
    parent = await submit(client, server, "fan_out", {"children": [demo(), failing]})
    events = await watch(client, server, parent["id"], timeout=15)
    assert [kind for kind, _ in events].count("failed") == 1 and events[-1][0] == "failed"
    assert events[-1][1]["error"]["type"] == "BatchFailed"
    assert events[-1][1]["metadata"]["children"]["failed"] == 1

    own = await submit(client, server, "fan_out", {"children": [demo(4, 0.1)], "fail": True})
    events = await watch(client, server, own["id"], timeout=15)
    assert events[-1][0] == "failed"
    assert events[-1][1]["error"]["message"].endswith("the parent's own step failed")
    (child,) = await children_of(client, server, own["id"])
    assert child["state"] == "succeeded"  # it ran to its end; the parent waited for it
    assert child["finished_at"] <= events[-1][1]["finished_at"]


async def test_progress_weighs_children_and_cancelling_a_parent_cancels_them(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    waiting = {"kind": "wait_cancel"}
    parent = await submit(client, server, "fan_out", {"children": [waiting] * 2, "hold": 30})

    async def weighted() -> bool:
        # its own part (100) and two children at 10 each: (100 + 10 + 10) / 3
        return (await snapshot(client, server, parent["id"]))["progress"] == 40.0

    await eventually(weighted, timeout=10)
    cancelled = await client.post(
        f"{server.url}/api/jobs/{parent['id']}/cancel", headers=server.auth("alice")
    )
    assert cancelled.status_code == 200, cancelled.text
    events = await watch(client, server, parent["id"], timeout=15)
    assert events[-1][0] == "cancelled"
    assert events[-1][1]["metadata"]["children"]["cancelled"] == 2
    for child in await children_of(client, server, parent["id"]):
        assert child["state"] == "cancelled"
        assert child["finished_at"] <= events[-1][1]["finished_at"]


async def test_a_batch_s_progress_weighs_its_children_s_progress(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    body = {"jobs": [{"kind": "wait_cancel"}, {"kind": "wait_cancel"}]}
    response = await client.post(
        f"{server.url}/api/batches", json=body, headers=server.auth("alice")
    )
    assert response.status_code == 202, response.text
    batch = response.json()

    async def weighted() -> bool:  # no child ended, each reported 10
        return (await snapshot(client, server, batch["id"]))["progress"] == 10.0

    await eventually(weighted, timeout=10)
    await client.post(f"{server.url}/api/jobs/{batch['id']}/cancel", headers=server.auth("alice"))
    events = await watch(client, server, batch["id"], timeout=15)
    assert events[-1][0] == "cancelled"


async def test_a_retried_parent_gets_its_children_back_instead_of_new_ones(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    parent = await submit(client, server, "fan_out_flaky")
    events = await watch(client, server, parent["id"], timeout=15)
    assert "retrying" in [kind for kind, _ in events] and events[-1][0] == "succeeded"
    children = await children_of(client, server, parent["id"])
    assert sorted(events[-1][1]["result"]) == sorted(child["id"] for child in children)
    assert len(children) == 2 and events[-1][1]["metadata"]["children"]["total"] == 2


async def test_spawning_a_kind_that_does_not_exist_fails_the_parent_with_the_reason(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    parent = await submit(client, server, "fan_out", {"children": [{"kind": "nope"}]})
    events = await watch(client, server, parent["id"], timeout=15)
    assert (
        events[-1][0] == "failed" and "unknown job kind 'nope'" in events[-1][1]["error"]["message"]
    )
    assert await children_of(client, server, parent["id"]) == []


async def test_many_children_s_progress_costs_one_parent_update_per_interval(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"], job_concurrency=50)
    jobs = [{"kind": "steady", "params": {"steps": 20, "delay": 0.02}} for _ in range(200)]
    response = await client.post(
        f"{server.url}/api/batches", json={"jobs": jobs}, headers=server.auth("alice")
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    events = await watch(client, server, batch["id"], timeout=60)
    assert events[-1][0] == "succeeded"
    moved = [data for kind, data in events if kind == "progress"]
    # each of 200 children stored its progress several times; the parent moved at most once
    # a progress interval (0.1 s) of the batch's run
    started = events[0][1]["updated_at"]
    seconds = _seconds(events[-1][1]["finished_at"]) - _seconds(started)
    assert 0 < len(moved) <= seconds / 0.1 + 3, (len(moved), seconds)
    progress = [data["progress"] for data in moved]
    assert progress == sorted(progress) and len(set(progress)) == len(progress)


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


async def test_a_shutdown_ends_an_interrupted_parent_only_after_its_children(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    waiting = {"kind": "wait_cancel"}
    parent = await submit(client, server, "fan_out", {"children": [waiting] * 2, "hold": 30})

    async def running() -> bool:
        found = (await snapshot(client, server, parent["id"]))["metadata"].get("children")
        return found is not None and found["total"] == 2

    await eventually(running, timeout=10)
    server.stop()  # neither is retry_safe: all fail as Interrupted (lifecycle.R3)

    restarted = make_server(handlers=["tests.handlers"])
    final = await snapshot(client, restarted, parent["id"])
    assert final["state"] == "failed" and final["error"]["type"] == "Interrupted"
    children = await children_of(client, restarted, parent["id"])
    assert [child["state"] for child in children] == ["failed", "failed"]
    assert all(child["finished_at"] <= final["finished_at"] for child in children)
    assert final["metadata"]["children"]["failed"] == 2


async def test_a_sync_handler_spawns_children_too(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    parent = await submit(client, server, "sync_fan_out", {"count": 3})
    events = await watch(client, server, parent["id"], timeout=15)
    assert events[-1][0] == "succeeded"
    assert events[-1][1]["metadata"]["children"]["succeeded"] == 3
    children = await children_of(client, server, parent["id"])
    assert sorted(events[-1][1]["result"]) == sorted(child["id"] for child in children)


async def test_parents_whose_children_end_as_their_handlers_return_each_end_once(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"], job_concurrency=16)
    quick = demo(1, 0)
    parents = [
        await submit(client, server, "fan_out", {"children": [quick] * 4}) for _ in range(12)
    ]
    for parent in parents:  # the hand-over and the last child's end race (spawn.S4)
        events = await watch(client, server, parent["id"], timeout=20)
        terminal = [kind for kind, _ in events if kind in ("succeeded", "failed", "cancelled")]
        assert terminal == ["succeeded"], terminal
        assert events[-1][1]["metadata"] == {"children": counts(succeeded=4, total=4)}


TERMINAL = ("succeeded", "failed", "cancelled")


async def test_a_parent_that_allows_child_failures_succeeds_with_them_counted_apart(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    # A child still running when the handler returns: the parent is handed over (spawn.S4)
    # and the last child's end decides its outcome from the stored switch (batches.G10).
    children = [demo(), demo(2, 0.05, fail_at=2)]
    parent = await submit(client, server, "tolerant_fan_out", {"children": children})
    events = await watch(client, server, parent["id"], timeout=15)
    assert [kind for kind, _ in events if kind in TERMINAL] == ["succeeded"]
    final = events[-1][1]
    assert final["result"] == {"spawned": 2, "attempt": 1} and final["error"] is None
    assert final["metadata"] == {
        "succeeded": "mine",  # the handler's own keys: the counts never overwrite them
        "total": 99,
        "refused": "the metadata key 'children' holds the counts of the job's children",
        "children": counts(True, succeeded=1, failed=1, total=2),
    }
    for kind, data in events:  # nor did any update on the way
        values = data["metadata"] if kind in ("metadata", "state", "snapshot") else {}
        assert values.get("succeeded", "mine") == "mine", (kind, data)
        assert values.get("total", 99) == 99, (kind, data)
    kinds = sorted(child["state"] for child in await children_of(client, server, parent["id"]))
    assert kinds == ["failed", "succeeded"]

    # Every child ended before the handler returned: it ends at once, succeeded too.
    failing = [demo(1, 0, fail_at=1)]
    held = await submit(client, server, "tolerant_fan_out", {"children": failing, "hold": 1})
    events = await watch(client, server, held["id"], timeout=15)
    assert events[-1][0] == "succeeded", events[-1]
    assert events[-1][1]["metadata"]["children"] == counts(True, failed=1, total=1)

    # Without the switch the same children fail the parent, and its metadata keys stay its own.
    strict = await submit(client, server, "fan_out", {"children": failing, "hold": 1})
    events = await watch(client, server, strict["id"], timeout=15)
    assert events[-1][0] == "failed" and events[-1][1]["error"]["type"] == "BatchFailed"
    assert events[-1][1]["metadata"] == {"children": counts(failed=1, total=1)}


async def test_allowed_child_failures_survive_a_restart_of_the_parent(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    waiting = {"kind": "wait_cancel"}
    params = {"children": [waiting] * 2, "hold": 30, "allow_once": True}
    parent = await submit(client, server, "tolerant_fan_out", params)

    async def stored() -> bool:
        found = (await snapshot(client, server, parent["id"]))["metadata"].get("children")
        return bool(found == counts(True, total=2))

    await eventually(stored, timeout=10)
    server.stop()  # its children fail as Interrupted; it is retry_safe: it runs again (R3)

    restarted = make_server(handlers=["tests.handlers"])
    events = await watch(client, restarted, parent["id"], timeout=15)
    assert events[-1][0] == "succeeded", events[-1]
    final = events[-1][1]
    # its second run did not call allow_child_failures: the stored switch held (spawn.S5),
    # and it got its two children back rather than new ones (S2)
    assert final["result"] == {"spawned": 2, "attempt": 2}
    assert final["metadata"]["children"] == counts(True, failed=2, total=2)
    children = await children_of(client, restarted, parent["id"])
    assert len(children) == 2
    for child in children:
        assert child["state"] == "failed" and child["error"]["type"] == "Interrupted"
        assert child["finished_at"] <= final["finished_at"]
