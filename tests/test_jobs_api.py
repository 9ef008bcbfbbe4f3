"""Jobs over HTTP against a real server: submit, watch (SSE), poll, list, cancel, delete."""

from __future__ import annotations

import asyncio
import hashlib
import stat
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest

from tests.jobs_support import (
    assert_monotonic,
    poll_until_done,
    submit,
    wait_running,
    watch,
)
from tests.support import EventStream, LiveServer

FAST = {"steps": 5, "delay": 0.02}


@pytest.fixture
def jobs_server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(heartbeat_interval=0.2, handlers=["tests.handlers"])


async def test_json_job_watched_over_sse_to_success(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "demo", FAST)
    assert job["state"] == "queued" and job["owner"] == "alice"
    assert job["links"]["events"] == f"/api/jobs/{job['id']}/events"

    events = await watch(client, jobs_server, job["id"])

    types = [t for t, _ in events]
    assert types[0] == "snapshot"
    assert types[-1] == "succeeded"
    assert "progress" in types
    # "running" arrives as a state event, or already in the snapshot if the job started first
    assert "state" in types or events[0][1]["state"] == "running"
    progress = [d["progress"] for t, d in events if t in ("snapshot", "progress", "succeeded")]
    assert_monotonic(progress)
    seqs = [d["seq"] for _, d in events]
    assert_monotonic(seqs)
    final = events[-1][1]
    assert final["state"] == "succeeded" and final["progress"] == 100.0
    assert final["result"] == {"steps": 5}
    assert final["started_at"] and final["finished_at"]


async def test_polling_sees_progress_to_the_end(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "demo", {"steps": 5, "delay": 0.05})
    snapshots = await poll_until_done(client, jobs_server, job["id"])
    assert_monotonic([s["progress"] for s in snapshots])
    assert snapshots[-1]["state"] == "succeeded"
    assert snapshots[-1]["eta_seconds"] == 0.0


async def test_file_job_is_streamed_hashed_and_ingested(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    content = b"line\n" * 300_000  # 1.5 MB: several chunks
    response = await client.post(
        f"{jobs_server.url}/api/jobs",
        data={"kind": "ingest", "params": "{}"},
        files={"file": ("../../etc/passwd.txt", content, "text/plain")},
        headers=jobs_server.auth(),
    )
    assert response.status_code == 202, response.text
    job = response.json()
    sha = hashlib.sha256(content).hexdigest()
    assert job["input"] == {
        "filename": "passwd.txt",
        "size": len(content),
        "sha256": sha,
        "content_type": "text/plain",
    }
    upload = jobs_server.jc.settings.data_dir / "uploads" / job["id"]
    assert upload.read_bytes() == content
    # private, as the rest of the data directory (regression: 0644 in a 0755 directory)
    assert stat.S_IMODE(upload.stat().st_mode) == 0o600
    assert stat.S_IMODE(upload.parent.stat().st_mode) == 0o700
    events = await watch(client, jobs_server, job["id"])
    assert events[-1][0] == "succeeded"
    assert events[-1][1]["result"]["sha256"] == sha
    assert events[-1][1]["result"]["lines"] == 300_000

    url = f"{jobs_server.url}/api/jobs/{job['id']}"
    deleted = await client.delete(url, headers=jobs_server.auth())
    assert deleted.status_code == 204
    assert not upload.exists()
    gone = await client.get(url, headers=jobs_server.auth())
    assert gone.status_code == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"kind": "nope"}, "unknown job kind"),
        ({"kind": "demo", "params": {"steps": 0}}, "steps"),
        ({"kind": "demo", "params": {"bogus": 1}}, "bogus"),
        ({"kind": "demo", "params": [1]}, "JSON object"),
        ({"kind": "ingest"}, "uploaded file"),
        ({"params": {}}, "kind"),
    ],
)
async def test_invalid_submissions_are_422(
    jobs_server: LiveServer, client: httpx.AsyncClient, body: dict[str, Any], fragment: str
) -> None:
    response = await client.post(
        f"{jobs_server.url}/api/jobs", json=body, headers=jobs_server.auth()
    )
    assert response.status_code == 422
    assert fragment in response.json()["message"]


@pytest.mark.parametrize(
    "params",
    [{"steps": True}, {"steps": "3"}, {"steps": 2.5}, {"delay": "0.1"}, {"fail_at": False}],
    ids=["bool-steps", "string-steps", "float-steps", "string-delay", "bool-fail-at"],
)
@pytest.mark.parametrize("multipart", [False, True], ids=["json", "multipart"])
async def test_built_in_params_are_not_coerced(
    jobs_server: LiveServer, client: httpx.AsyncClient, params: dict[str, Any], multipart: bool
) -> None:
    # Regression: {"steps": true} ran a job of one step.
    url, headers = f"{jobs_server.url}/api/jobs", jobs_server.auth()
    if multipart:  # params travel as one JSON text field: the same types, the same checks
        text = orjson.dumps(params).decode()
        response = await client.post(
            url, data={"kind": "demo", "params": text}, files={"file": b"x"}, headers=headers
        )
    else:
        response = await client.post(url, json={"kind": "demo", "params": params}, headers=headers)
    assert response.status_code == 422, response.text
    field = next(iter(params))
    assert f"invalid params for 'demo': {field}:" in response.json()["message"]
    assert (await client.get(url, headers=headers)).json()["jobs"] == []
    # The same params with their proper types are accepted, over both entrances.
    good = {"steps": 1, "delay": 0, "fail_at": None}
    accepted = await client.post(url, json={"kind": "demo", "params": good}, headers=headers)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["params"] == good
    uploaded = await client.post(
        url, data={"kind": "ingest", "params": "{}"}, files={"file": b"x"}, headers=headers
    )
    assert uploaded.status_code == 202, uploaded.text


@pytest.mark.parametrize("multipart", [False, True], ids=["json", "multipart"])
async def test_params_json_cannot_carry_exactly_are_422_not_rounded(
    jobs_server: LiveServer, client: httpx.AsyncClient, multipart: bool
) -> None:
    # Regression: orjson reads an integer beyond 64 bits as a float, so the job ran with
    # a different number than the one submitted.
    url, headers = f"{jobs_server.url}/api/jobs", jobs_server.auth()
    params = '{"steps": 1, "delay": 0, "tag": 123456789012345678901234}'
    if multipart:
        response = await client.post(
            url, data={"kind": "ingest", "params": params}, files={"file": b"x"}, headers=headers
        )
    else:
        body = '{"kind": "demo", "params": ' + params + "}"
        headers = {**headers, "Content-Type": "application/json"}
        response = await client.post(url, content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert "beyond 64 bits" in response.json()["message"]
    listed = await client.get(url, headers=headers)
    assert listed.json()["jobs"] == []
    exact = '{"kind": "demo", "params": {"steps": 1, "delay": 0}, "x": 18446744073709551615}'
    extra = await client.post(
        url, content=exact, headers={**headers, "Content-Type": "application/json"}
    )
    assert "unexpected fields: x" in extra.json()["message"]  # 2**64 - 1 reads exactly


async def test_submitting_needs_a_token(jobs_server: LiveServer, client: httpx.AsyncClient) -> None:
    response = await client.post(f"{jobs_server.url}/api/jobs", json={"kind": "demo"})
    assert response.status_code == 401


async def test_failure_carries_the_error(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "demo", {"steps": 4, "delay": 0.01, "fail_at": 2})
    events = await watch(client, jobs_server, job["id"])
    kind, final = events[-1]
    assert kind == "failed"
    assert final["error"] == {
        "type": "DemoFailure",
        "message": "demo failure at step 2, as requested by fail_at",
    }


@pytest.mark.parametrize("kind", ["wait_cancel", "sync_wait"])
async def test_cancel_a_running_job(
    jobs_server: LiveServer, client: httpx.AsyncClient, kind: str
) -> None:
    job = await submit(client, jobs_server, kind)
    await wait_running(client, jobs_server, job["id"])
    url = f"{jobs_server.url}/api/jobs/{job['id']}"
    async with EventStream(client, f"{url}/events", headers=jobs_server.auth()) as stream:
        response = await client.post(f"{url}/cancel", headers=jobs_server.auth())
        assert response.status_code == 200
        assert response.json()["state"] == "cancelled"
        events = await stream.until_end()
    assert events[-1].event == "cancelled"
    again = await client.post(f"{url}/cancel", headers=jobs_server.auth())
    assert again.status_code == 409


async def test_cancel_a_queued_job(make_server: Callable[..., LiveServer]) -> None:
    server = make_server(job_concurrency=1, job_max_queued=1, handlers=["tests.handlers"])
    async with httpx.AsyncClient(timeout=10) as client:
        blocker = await submit(client, server, "wait_cancel")
        queued = await submit(client, server, "demo", FAST)
        url = f"{server.url}/api/jobs/{queued['id']}"
        response = await client.post(f"{url}/cancel", headers=server.auth())
        assert response.json()["state"] == "cancelled"
        assert response.json()["started_at"] is None
        # Regression: the cancelled job kept its place in the queue, so the next was a 503.
        await submit(client, server, "demo", FAST)
        await client.post(f"{server.url}/api/jobs/{blocker['id']}/cancel", headers=server.auth())


async def test_delete_refuses_unfinished_jobs(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "wait_cancel")
    url = f"{jobs_server.url}/api/jobs/{job['id']}"
    response = await client.delete(url, headers=jobs_server.auth())
    assert response.status_code == 409
    await client.post(f"{url}/cancel", headers=jobs_server.auth())
    assert (await client.delete(url, headers=jobs_server.auth())).status_code == 204


async def test_timeouts_and_bad_results_fail(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    slow = await submit(client, jobs_server, "slow")
    bad = await submit(client, jobs_server, "bad_result")
    slow_final = (await watch(client, jobs_server, slow["id"]))[-1]
    bad_final = (await watch(client, jobs_server, bad["id"]))[-1]
    assert slow_final[0] == "failed" and slow_final[1]["error"]["type"] == "Timeout"
    assert bad_final[0] == "failed" and bad_final[1]["error"]["type"] == "InvalidResult"


async def test_custom_events_arrive_in_order_before_the_end(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "chatty")
    events = await watch(client, jobs_server, job["id"])
    notes = [d for t, d in events if t == "note"]
    assert [n["data"] for n in notes] == [{"index": 0}, {"index": 1}, {"index": 2}]
    assert events[-1][0] == "succeeded" and events[-1][1]["result"] == "done"


async def test_progress_floods_are_coalesced(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "spin", {"n": 200_000})
    events = await watch(client, jobs_server, job["id"], timeout=30)
    progress = [d["progress"] for t, d in events if t == "progress"]
    assert len(progress) < 500  # not 200,000
    assert_monotonic(progress)
    assert events[-1][0] == "succeeded" and events[-1][1]["progress"] == 100.0


async def test_a_late_client_gets_the_final_snapshot_and_the_end(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "demo", FAST)
    await watch(client, jobs_server, job["id"])
    late = await watch(client, jobs_server, job["id"], timeout=2)
    assert [t for t, _ in late] == ["snapshot", "succeeded"]
    assert late[0][1]["state"] == "succeeded"


async def test_resume_with_last_event_id_mid_job(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "demo", {"steps": 6, "delay": 0.05})
    url = f"{jobs_server.url}/api/jobs/{job['id']}/events"
    async with EventStream(client, url, headers=jobs_server.auth()) as stream:
        first = [await stream.next() for _ in range(3)]  # snapshot, then two more
    last_id = first[-1].id
    assert last_id
    headers = {**jobs_server.auth(), "Last-Event-ID": last_id}
    async with EventStream(client, url, headers=headers) as stream:
        rest = await stream.until_end()
    assert rest[0].event != "snapshot"
    assert rest[-1].event == "succeeded"
    ids = [e.id for e in first + rest]
    assert len(ids) == len(set(ids)), "no duplicates"
    seqs = [orjson.loads(e.data or "{}")["seq"] for e in first + rest]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no gaps"


async def test_resume_after_the_end_just_closes(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "demo", FAST)
    url = f"{jobs_server.url}/api/jobs/{job['id']}/events"
    async with EventStream(client, url, headers=jobs_server.auth()) as stream:
        events = await stream.until_end()
    headers = {**jobs_server.auth(), "Last-Event-ID": events[-1].id or ""}
    async with EventStream(client, url, headers=headers) as stream:
        assert await stream.until_end(2) == []
    # 204: the one answer that stops a browser's EventSource from reconnecting for ever
    assert stream.response is not None and stream.response.status_code == 204


async def test_owners_see_their_jobs_and_privileged_roles_see_all(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "wait_cancel")
    url = f"{jobs_server.url}/api/jobs/{job['id']}"
    bob = jobs_server.auth("bob")
    assert (await client.get(url, headers=bob)).status_code == 404
    assert (await client.post(f"{url}/cancel", headers=bob)).status_code == 404
    assert (await client.delete(url, headers=bob)).status_code == 404
    assert (await client.get(f"{url}/events", headers=bob)).status_code == 404
    listed = await client.get(f"{jobs_server.url}/api/jobs", headers=bob)
    assert listed.json()["jobs"] == []
    for role in ("service", "admin"):
        headers = jobs_server.auth("ops", role)
        assert (await client.get(url, headers=headers)).status_code == 200
    admin_list = await client.get(
        f"{jobs_server.url}/api/jobs", headers=jobs_server.auth("ops", "admin")
    )
    assert [j["id"] for j in admin_list.json()["jobs"]] == [job["id"]]
    assert (await client.post(f"{url}/cancel", headers=jobs_server.auth("ops", "admin"))).json()[
        "state"
    ] == "cancelled"


async def test_unknown_job_is_404(jobs_server: LiveServer, client: httpx.AsyncClient) -> None:
    for path in ("", "/events"):
        response = await client.get(
            f"{jobs_server.url}/api/jobs/0123abc{path}", headers=jobs_server.auth()
        )
        assert response.status_code == 404


async def test_list_filters_and_paginates(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    ids = [(await submit(client, jobs_server, "demo", FAST))["id"] for _ in range(5)]
    failing = await submit(client, jobs_server, "demo", {"steps": 1, "delay": 0, "fail_at": 1})
    await watch(client, jobs_server, failing["id"])
    url = f"{jobs_server.url}/api/jobs"
    seen: list[str] = []
    params: dict[str, Any] = {"kind": "demo", "limit": 2}
    while True:
        page = (await client.get(url, params=params, headers=jobs_server.auth())).json()
        seen.extend(j["id"] for j in page["jobs"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == sorted([*ids, failing["id"]], reverse=True)
    failed = await client.get(url, params={"state": "failed"}, headers=jobs_server.auth())
    assert [j["id"] for j in failed.json()["jobs"]] == [failing["id"]]
    bad = await client.get(url, params={"cursor": "../x"}, headers=jobs_server.auth())
    assert bad.status_code == 422


async def test_job_events_reach_the_hub_topic_only_for_their_owner(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    url = f"{jobs_server.url}/api/events"
    params = {"topic": "jobs/*"}
    async with (
        EventStream(client, url, params=params, headers=jobs_server.auth("alice")) as alice,
        EventStream(client, url, params=params, headers=jobs_server.auth("bob")) as bob,
    ):
        bobs = await submit(client, jobs_server, "demo", FAST, sub="bob")
        alices = await submit(client, jobs_server, "demo", FAST, sub="alice")
        for stream, job in ((alice, alices), (bob, bobs)):
            async with asyncio.timeout(10):
                while True:
                    event = await stream.next()
                    data = orjson.loads(event.data or "{}")
                    assert data["id"] == job["id"], "only the subscriber's own jobs"
                    if event.event == "succeeded":
                        break


async def test_eta_mid_run_is_the_time_left_at_the_rate_so_far(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "demo", {"steps": 4, "delay": 0.2})
    events = await watch(client, jobs_server, job["id"])
    started = datetime.fromisoformat(
        next(d["started_at"] for _, d in events if d.get("started_at"))
    )
    mid_run = [d for t, d in events if t == "progress" and 0 < d["progress"] < 100]
    assert mid_run  # 25, 50 and 75 %, unless the latest replaced one
    for report in mid_run:
        done = report["progress"] / 100
        elapsed = (datetime.fromisoformat(report["updated_at"]) - started).total_seconds()
        assert elapsed >= 0.8 * done  # four 0.2 s steps
        # halfway: as long again as the time spent so far
        assert report["eta_seconds"] == pytest.approx(elapsed * (1 - done) / done, abs=0.01)
        assert report["eta_seconds"] > 0
