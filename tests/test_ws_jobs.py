"""``/ws/jobs/{id}`` against a real server."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.jobs_support import assert_monotonic, submit, watch
from tests.support import LiveServer
from tests.ws_support import receive, receive_until_closed, send

FAST = {"steps": 5, "delay": 0.02}


@pytest.fixture
def jobs_server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(heartbeat_interval=0.2, ws_auth_timeout=2, handlers=["tests.handlers"])


def ws_url(server: LiveServer, job_id: str) -> str:
    return f"ws://{server.host}:{server.port}/ws/jobs/{job_id}"


async def test_job_events_as_json_messages_then_close_1000(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "demo", FAST)
    async with connect(f"{ws_url(jobs_server, job['id'])}?token={jobs_server.token()}") as ws:
        messages = await receive_until_closed(ws)
        assert ws.close_code == 1000
    types = [m["type"] for m in messages]
    assert types[0] == "snapshot" and types[-1] == "succeeded"
    assert "progress" in types
    assert all(m["topic"] == f"jobs/{job['id']}" for m in messages)
    assert_monotonic([m["data"]["progress"] for m in messages if "progress" in m["data"]])
    assert messages[-1]["data"]["result"] == {"steps": 5}


async def test_token_in_the_first_message(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "demo", FAST)
    async with connect(ws_url(jobs_server, job["id"])) as ws:
        await send(ws, {"op": "auth", "token": jobs_server.token()})
        messages = await receive_until_closed(ws)
        assert ws.close_code == 1000
    assert messages[-1]["type"] == "succeeded"


@pytest.mark.parametrize(
    ("who", "job_exists", "code"),
    [(None, True, 4401), ("bob", True, 4404), ("alice", False, 4404)],
)
async def test_refusals_close_with_a_reason(
    jobs_server: LiveServer,
    client: httpx.AsyncClient,
    who: str | None,
    job_exists: bool,
    code: int,
) -> None:
    job_id = (await submit(client, jobs_server, "demo", FAST))["id"] if job_exists else "0abc"
    url = ws_url(jobs_server, job_id)
    if who is not None:
        url += f"?token={jobs_server.token(who)}"
    async with connect(url) as ws:
        if who is None:
            await send(ws, {"op": "subscribe"})  # not an auth message
        messages = await receive_until_closed(ws)
        assert ws.close_code == code
    assert messages[-1]["op"] == "error"


async def test_a_late_client_gets_the_final_snapshot_and_close(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "demo", FAST)
    await watch(client, jobs_server, job["id"])
    async with connect(f"{ws_url(jobs_server, job['id'])}?token={jobs_server.token()}") as ws:
        messages = await receive_until_closed(ws, timeout=2)
        assert ws.close_code == 1000
    assert [m["type"] for m in messages] == ["snapshot", "succeeded"]


async def test_resume_mid_job_with_last_event_id(
    jobs_server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, jobs_server, "demo", {"steps": 6, "delay": 0.05})
    url = f"{ws_url(jobs_server, job['id'])}?token={jobs_server.token()}"
    async with connect(url) as ws:
        first = [await receive(ws) for _ in range(3)]
    async with connect(f"{url}&last_event_id={first[-1]['id']}") as ws:
        rest = await receive_until_closed(ws)
    assert rest[0]["type"] != "snapshot" and rest[-1]["type"] == "succeeded"
    seqs = [m["data"]["seq"] for m in first + rest]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
