"""Authorization matrix: one policy decides every job route, both streams and both sockets.

Principals: the owner, another user, a user the owner granted read access (``readers``), a user
whose token grants the job's topic, a service and an admin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import orjson
import pytest
import websockets

from tests.jobs_support import submit
from tests.support import EventStream, LiveServer
from tests.ws_support import receive, receive_until_closed, send

LiveServerFactory = Callable[..., LiveServer]

#: principal -> (sub, role, uses a topic grant)
PRINCIPALS = {
    "owner": ("alice", "user", False),
    "other": ("mallory", "user", False),
    "reader": ("bob", "user", False),
    "granted": ("carol", "user", True),
    "service": ("svc", "service", False),
    "admin": ("root", "admin", False),
}

#: principal -> expected status for: read, cancel, delete, grant, listed, rerun
EXPECTED = {
    "owner": (200, 200, 204, 200, True, 202),
    "other": (404, 404, 404, 404, False, 404),
    "reader": (200, 403, 403, 403, False, 403),
    "granted": (200, 403, 403, 403, False, 403),
    "service": (200, 200, 204, 403, True, 403),
    "admin": (200, 200, 204, 200, True, 202),
}


def headers_for(server: LiveServer, who: str, job_id: str) -> dict[str, str]:
    sub, role, granted = PRINCIPALS[who]
    grants = [f"jobs/{job_id}"] if granted else None
    return server.auth(sub, role, grants=grants)


async def setup_jobs(server: LiveServer, client: httpx.AsyncClient) -> tuple[str, str]:
    """A running job and a finished one, both alice's, both shared with bob."""
    running = await submit(client, server, "demo", {"steps": 200, "delay": 0.05})
    done = await submit(client, server, "demo", {"steps": 1, "delay": 0})
    for job_id in (running["id"], done["id"]):
        shared = await client.put(
            f"{server.url}/api/jobs/{job_id}/readers/bob", headers=server.auth("alice")
        )
        assert shared.status_code == 200 and shared.json()["readers"] == ["bob"]
    async with EventStream(
        client, f"{server.url}/api/jobs/{done['id']}/events", headers=server.auth()
    ) as stream:
        assert (await stream.until_end())[-1].event == "succeeded"
    return running["id"], done["id"]


@pytest.mark.parametrize("who", list(PRINCIPALS))
async def test_job_routes_follow_the_policy(
    make_server: LiveServerFactory, client: httpx.AsyncClient, who: str
) -> None:
    server = make_server(heartbeat_interval=0.2)
    running, done = await setup_jobs(server, client)
    read, cancel, delete, grant, listed, rerun = EXPECTED[who]
    h = headers_for(server, who, running)
    assert (await client.get(f"{server.url}/api/jobs/{running}", headers=h)).status_code == read

    sse = await client.get(
        f"{server.url}/api/jobs/{done}/events", headers=headers_for(server, who, done)
    )
    assert sse.status_code == read

    listing = await client.get(f"{server.url}/api/jobs", headers=h)
    assert listing.status_code == 200
    assert (running in [job["id"] for job in listing.json()["jobs"]]) == listed

    shared = await client.put(f"{server.url}/api/jobs/{running}/readers/dave", headers=h)
    assert shared.status_code == grant

    cancelled = await client.post(f"{server.url}/api/jobs/{running}/cancel", headers=h)
    assert cancelled.status_code == cancel
    rerun_response = await client.post(
        f"{server.url}/api/jobs/{done}/rerun", headers=headers_for(server, who, done)
    )
    assert rerun_response.status_code == rerun, rerun_response.text
    deleted = await client.delete(
        f"{server.url}/api/jobs/{done}", headers=headers_for(server, who, done)
    )
    assert deleted.status_code == delete


@pytest.mark.parametrize("who", list(PRINCIPALS))
async def test_job_socket_follows_the_policy(
    make_server: LiveServerFactory, client: httpx.AsyncClient, who: str
) -> None:
    server = make_server()
    _, done = await setup_jobs(server, client)
    token = headers_for(server, who, done)["Authorization"].removeprefix("Bearer ")
    url = f"ws://{server.host}:{server.port}/ws/jobs/{done}?token={token}"
    async with asyncio.timeout(10):
        async with websockets.connect(url) as ws:
            messages = await receive_until_closed(ws)
            code = ws.close_code
    if EXPECTED[who][0] == 200:
        assert messages[-1]["type"] == "succeeded" and code == 1000
    else:
        assert code == 4404 and messages[-1]["op"] == "error"


#: principal -> whose jobs a jobs/* subscription shows: alice's job (shared with bob), zed's
WILDCARD_SEES = {
    "owner": {"alice"},
    "other": set(),
    "reader": {"alice"},
    "granted": {"alice", "zed"},  # the token grants jobs/*
    "service": {"alice", "zed"},
    "admin": {"alice", "zed"},
}


async def finish(client: httpx.AsyncClient, server: LiveServer, owner: str) -> str:
    # Long enough to be shared while it runs: a reader sees what follows the grant.
    job = await submit(client, server, "demo", {"steps": 3, "delay": 0.2}, sub=owner)
    if owner == "alice":
        shared = await client.put(
            f"{server.url}/api/jobs/{job['id']}/readers/bob", headers=server.auth("alice")
        )
        assert shared.status_code == 200
        assert shared.json()["state"] != "succeeded", "the job ended before it was shared"
    async with EventStream(
        client, f"{server.url}/api/jobs/{job['id']}/events", headers=server.auth(owner)
    ) as stream:
        assert (await stream.until_end())[-1].event == "succeeded"
    return str(job["id"])


@pytest.mark.parametrize("who", list(PRINCIPALS))
async def test_wildcard_streams_deliver_only_visible_jobs(
    make_server: LiveServerFactory, client: httpx.AsyncClient, who: str
) -> None:
    """Subscribed to jobs/* before the jobs exist: each job is checked as it appears, on the
    SSE stream and on the events WebSocket alike."""
    server = make_server(heartbeat_interval=0.2)
    sub, role, granted = PRINCIPALS[who]
    token = server.token(sub, role, grants=["jobs/*", "sentinel"] if granted else None)
    sse = EventStream(
        client,
        f"{server.url}/api/events",
        params={"topic": ["jobs/*", "sentinel"], "token": token},
    )
    ws_url = f"ws://{server.host}:{server.port}/ws/events?token={token}"
    async with sse, websockets.connect(ws_url) as ws:
        await send(ws, {"op": "subscribe", "topics": ["jobs/*", "sentinel"]})
        assert (await receive(ws))["op"] == "subscribed"
        owners = {
            await finish(client, server, "alice"): "alice",
            await finish(client, server, "zed"): "zed",
        }
        await client.post(
            f"{server.url}/api/events",
            json={"topic": "sentinel", "type": "end"},
            headers=server.auth("svc", "service"),
        )
        seen_sse: set[str] = set()
        while (event := await sse.next()).event != "end":
            if event.event == "succeeded":
                seen_sse.add(owners[orjson.loads(event.data or "{}")["id"]])
        seen_ws: set[str] = set()
        while (message := await receive(ws)).get("type") != "end":
            if message.get("type") == "succeeded":
                seen_ws.add(owners[message["topic"].removeprefix("jobs/")])
    assert seen_sse == WILDCARD_SEES[who]
    assert seen_ws == WILDCARD_SEES[who]


async def until_ping_after(stream: EventStream) -> list[str]:
    """The event types a stream delivers up to its next heartbeat."""
    types = []
    while (event := await stream.next()).comment is None:
        types.append(event.event)
    return types


async def test_unsharing_a_job_ends_what_the_readers_open_streams_deliver(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    # Regression: a job's own SSE stream and socket checked access once, at the start, so a
    # reader removed from the job kept receiving it, its result included.
    server = make_server(heartbeat_interval=0.2)
    job = await submit(client, server, "demo", {"steps": 200, "delay": 0.05})
    readers = f"{server.url}/api/jobs/{job['id']}/readers/bob"
    assert (await client.put(readers, headers=server.auth("alice"))).status_code == 200
    bob = server.token("bob")
    sse = EventStream(
        client, f"{server.url}/api/jobs/{job['id']}/events", params={"token": bob}, comments=True
    )
    ws_url = f"ws://{server.host}:{server.port}/ws/jobs/{job['id']}?token={bob}"
    async with sse, websockets.connect(ws_url) as ws:
        assert (await sse.next()).event == "snapshot"
        assert (await receive(ws))["type"] == "snapshot"
        assert (await client.delete(readers, headers=server.auth("alice"))).status_code == 200
        cancel = await client.post(
            f"{server.url}/api/jobs/{job['id']}/cancel", headers=server.auth("alice")
        )
        assert cancel.json()["state"] == "cancelled"
        # Anything still reaching bob was delivered before the heartbeat that follows it.
        assert "cancelled" not in await until_ping_after(sse)
        while (message := await receive(ws)).get("op") != "ping":
            assert message.get("type") != "cancelled", message


async def test_anonymous_streams_never_carry_jobs_even_when_every_topic_is_public(
    make_server: LiveServerFactory, client: httpx.AsyncClient
) -> None:
    # Regression: with JOBCAST_PUBLIC_TOPICS=*, an anonymous jobs/* stream got every user's
    # jobs while signed-in users got only their own.
    server = make_server(heartbeat_interval=0.2, public_topics=["*"])
    sse = EventStream(client, f"{server.url}/api/events", params={"topic": ["jobs/*", "sentinel"]})
    ws_url = f"ws://{server.host}:{server.port}/ws/events"
    async with sse, websockets.connect(ws_url) as ws:
        await send(ws, {"op": "subscribe", "topics": ["*"]})
        assert (await receive(ws))["op"] == "subscribed"
        await finish(client, server, "alice")
        await client.post(
            f"{server.url}/api/events",
            json={"topic": "sentinel", "type": "end"},
            headers=server.auth("svc", "service"),
        )
        sse_types = []
        while (event := await sse.next()).event != "end":
            sse_types.append(event.event)
        ws_topics = []
        while (message := await receive(ws)).get("type") != "end":
            if "topic" in message:  # an event, not a ping
                ws_topics.append(message["topic"])
    assert sse_types == [] and ws_topics == []


async def test_a_stream_ticket_does_not_poll_its_job(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, server, "demo", {"steps": 1, "delay": 0})
    ticket = await client.post(
        f"{server.url}/api/auth/ticket",
        json={"topics": [f"jobs/{job['id']}"]},
        headers=server.auth(),
    )
    polled = await client.get(
        f"{server.url}/api/jobs/{job['id']}", params={"ticket": ticket.json()["ticket"]}
    )
    assert polled.status_code == 403, polled.text
    assert "only opens streams" in polled.json()["message"]


async def test_grants_made_at_once_all_take_effect(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    # Regression: a grant read the readers and wrote them back whole, so of grants made at
    # the same time all but one were lost, each answered 200.
    job = await submit(client, server, "demo", {"steps": 1, "delay": 0})
    url = f"{server.url}/api/jobs/{job['id']}/readers"
    subjects = [f"reader{n}" for n in range(10)]
    granted = await asyncio.gather(
        *(client.put(f"{url}/{subject}", headers=server.auth("alice")) for subject in subjects)
    )
    assert all(response.status_code == 200 for response in granted)
    polled = await client.get(f"{server.url}/api/jobs/{job['id']}", headers=server.auth("alice"))
    assert sorted(polled.json()["readers"]) == subjects
    odd = await client.put(f"{url}/%20bob", headers=server.auth("alice"))
    assert odd.status_code == 422
