"""The stream and socket fast paths (serving/fast_streams.py, entrance.py) and the framework
routes behind them agree."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
import websockets

from jobcast.server.routes.table import JOB_SOCKET, JOB_STREAM
from tests.support import EventStream, LiveServer
from tests.ws_support import receive, send


@pytest.mark.parametrize(
    ("path", "job_id"),
    [
        ("/api/jobs/abc/events", "abc"),
        ("/api/jobs/abc/events/", None),
        ("/api/jobs//events", None),
        ("/api/jobs/a/b/events", None),
        ("/api/jobs/abc", None),
        ("/api/events", None),
    ],
)
def test_only_job_stream_paths_take_the_fast_path(path: str, job_id: str | None) -> None:
    assert JOB_STREAM.match(path) == job_id


async def test_the_framework_routes_stream_without_the_fast_path(
    router_only: LiveServer, client: httpx.AsyncClient
) -> None:
    server = router_only
    url = f"{server.url}/api/events"
    async with EventStream(client, url, params={"topic": "a"}, headers=server.auth()) as events:
        published = await client.post(
            f"{server.url}/api/events",
            json={"topic": "a", "type": "t", "data": 1},
            headers=server.auth("w", "service"),
        )
        assert published.status_code == 202
        event = await events.next()
        assert (event.event, event.data, event.id) == ("t", "1", published.json()["id"])
    missing = await client.get(url, headers=server.auth())
    assert missing.status_code == 422


async def test_stream_errors_and_cors_are_the_same_on_the_fast_path(
    make_server: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = make_server(cors_origins="http://localhost:5173")
    url = f"{server.url}/api/events"
    refused = await client.get(url, params={"topic": "a"}, headers={"Authorization": "Bearer x"})
    assert refused.status_code == 401
    assert refused.json()["reason"] == "malformed_token"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    unknown = await client.get(f"{server.url}/api/jobs/nope/events", headers=server.auth())
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"

    origin = {"Origin": "http://localhost:5173", **server.auth()}
    async with EventStream(client, url, params={"topic": "a"}, headers=origin) as events:
        assert events.response is not None
        assert events.response.headers["access-control-allow-origin"] == "http://localhost:5173"


@pytest.mark.parametrize(
    ("path", "job_id"),
    [("/ws/jobs/abc", "abc"), ("/ws/jobs/", None), ("/ws/jobs/a/b", None), ("/ws/events", None)],
)
def test_only_job_socket_paths_name_a_job(path: str, job_id: str | None) -> None:
    assert JOB_SOCKET.match(path) == job_id


@pytest.mark.parametrize("entrance", ["server", "router_only"], ids=["fast", "framework"])
async def test_event_sockets_behave_the_same_through_either_entrance(
    entrance: str, request: pytest.FixtureRequest, client: httpx.AsyncClient
) -> None:
    live: LiveServer = request.getfixturevalue(entrance)
    url = f"{live.url.replace('http', 'ws')}/ws/events?token={live.token()}"
    async with asyncio.timeout(10), websockets.connect(url) as ws:
        await send(ws, {"op": "subscribe", "topics": ["a"]})
        assert (await receive(ws))["op"] == "subscribed"
        published = await client.post(
            f"{live.url}/api/events",
            json={"topic": "a", "type": "t", "data": 1},
            headers=live.auth("w", "service"),
        )
        event = await receive(ws)
        assert (event["type"], event["data"], event["id"]) == ("t", 1, published.json()["id"])
    foreign = {"Origin": "https://evil.example"}
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with asyncio.timeout(10), websockets.connect(url, additional_headers=foreign):
            pass
    assert refused.value.response.status_code == 403  # cross-site handshakes are refused
