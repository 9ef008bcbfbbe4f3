"""Job metadata and tags through a real server: coalesced updates, the snapshot, the store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.jobs_support import watch
from tests.support import LiveServer


def fold(events: list[tuple[str, Any]]) -> dict[str, Any]:
    """The metadata a watcher knows after ``events``, as the clients fold them."""
    metadata: dict[str, Any] = {}
    for event_type, data in events:
        if event_type == "metadata":
            metadata.update(data["metadata"])
            for key in data["removed"]:
                metadata.pop(key, None)
        elif isinstance(data, dict) and "metadata" in data and "state" in data:
            metadata = dict(data["metadata"])
    return metadata


async def test_metadata_updates_are_coalesced_ordered_and_final_in_the_snapshot(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])
    response = await client.post(
        f"{server.url}/api/jobs",
        json={
            "kind": "metadata",
            "params": {"n": 2000},
            "metadata": {"source": "upload", "pages": 0},
            "tags": ["customer:42", "batch-7"],
        },
        headers=server.auth("alice"),
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["metadata"] == {"source": "upload", "pages": 0}
    assert job["tags"] == ["customer:42", "batch-7"]

    events = await watch(client, server, job["id"])
    final = {"source": "upload", "pages": 2000, "done": list(range(100, 2001, 100))}
    final |= {"language": "fr", "cost": 0.25}
    assert events[-1][0] == "succeeded"
    assert events[-1][1]["metadata"] == final  # the refused update changed nothing
    assert "limit is 65536" in events[-1][1]["result"]["refused"]
    updates = [data for kind, data in events if kind == "metadata"]
    assert 0 < len(updates) < 200  # 6,000 updates, coalesced
    pages = [u["metadata"]["pages"] for u in updates if "pages" in u["metadata"]]
    assert pages == sorted(pages)  # never reordered
    seqs = [data["seq"] for _, data in events if isinstance(data, dict) and "seq" in data]
    assert seqs == sorted(seqs)
    assert fold(events) == final  # deltas folded give the final value
    assert updates[-1]["removed"] == ["current"] or any("current" in u["removed"] for u in updates)

    polled = await client.get(f"{server.url}/api/jobs/{job['id']}", headers=server.auth("alice"))
    assert polled.json()["metadata"] == final
    server.stop()  # stored: a restarted server reads it back
    restarted = make_server(handlers=["tests.handlers"])
    again = await client.get(
        f"{restarted.url}/api/jobs/{job['id']}", headers=restarted.auth("alice")
    )
    assert again.json()["metadata"] == final
    assert again.json()["tags"] == ["customer:42", "batch-7"]


async def test_tags_filter_the_job_list_and_bad_tags_are_refused(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(handlers=["tests.handlers"])

    async def submit(tags: Any, sub: str = "alice", **extra: Any) -> httpx.Response:
        body = {"kind": "demo", "params": {"steps": 1, "delay": 0}, "tags": tags, **extra}
        return await client.post(f"{server.url}/api/jobs", json=body, headers=server.auth(sub))

    both = (await submit(["customer:42", "batch-7"])).json()
    one = (await submit(["customer:42"])).json()
    (await submit(["customer:42", "batch-7"], sub="bob")).json()

    async def listed(*tags: str, sub: str = "alice") -> list[str]:
        response = await client.get(
            f"{server.url}/api/jobs", params={"tag": list(tags)}, headers=server.auth(sub)
        )
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["jobs"]]

    assert await listed("customer:42") == [one["id"], both["id"]]
    assert await listed("customer:42", "batch-7") == [both["id"]]  # all must match
    assert len(await listed("batch-7", sub="bob")) == 1  # never another user's job

    for bad, reason in [
        (["x"] * 0 + [f"t{i}" for i in range(11)], "at most 10 tags"),
        (["has space"], "a tag is 1 to 64"),
        (["x" * 65], "a tag is 1 to 64"),
        ("customer:42", "tags must be a list"),
        ([42], "a tag is 1 to 64"),
    ]:
        response = await submit(bad)
        assert response.status_code == 422, (bad, response.text)
        assert reason in response.json()["message"], response.text
    response = await submit([], metadata={"big": "x" * 70_000})
    assert response.status_code == 422
    assert "limit is 65536" in response.json()["message"]
    response = await submit([], metadata=["not", "an", "object"])
    assert response.status_code == 422
    bad_query = await client.get(
        f"{server.url}/api/jobs", params={"tag": "no spaces"}, headers=server.auth("alice")
    )
    assert bad_query.status_code == 422
