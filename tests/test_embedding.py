"""jobcast installed into a host application changes nothing of the host's (server/mount.py).

The host has its own ``/``, ``/health``, exception handler, a 10 MiB upload route and its own
way to know who is calling (an override of ``jc.principal``); jobcast is mounted under a
prefix, and a conflicting mount is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from jobcast import Jobcast, Principal, Role
from jobcast.server.mount import RouteConflict
from tests.support import EventStream, LiveServer, make_settings
from tests.ws_support import receive_op, send

TEN_MIB = 10 * 1024 * 1024


class HostError(Exception):
    pass


def host_app(jc: Jobcast, **install: Any) -> FastAPI:
    app = FastAPI(lifespan=jc.lifespan)

    @app.exception_handler(HostError)
    async def host_error(request: Request, exc: HostError) -> JSONResponse:
        return JSONResponse({"host": "error"}, status_code=418)

    @app.get("/")
    async def home() -> dict[str, str]:
        return {"host": "home"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"host": "healthy"}

    @app.get("/boom")
    async def boom() -> None:
        raise HostError

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    jc.install(app, **install)
    return app


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[LiveServer]:
    jc = Jobcast(make_settings(data_dir=tmp_path, heartbeat_interval=0.2, max_body_bytes=1024))
    server = LiveServer(host_app(jc, prefix="/jobcast")).start()
    yield server
    server.stop()


async def test_the_host_keeps_its_routes_handlers_and_limits(
    embedded: LiveServer, client: httpx.AsyncClient
) -> None:
    url = embedded.url
    assert (await client.get(f"{url}/")).json() == {"host": "home"}
    assert (await client.get(f"{url}/health")).json() == {"host": "healthy"}
    boom = await client.get(f"{url}/boom")
    assert (boom.status_code, boom.json()) == (418, {"host": "error"})
    uploaded = await client.post(f"{url}/upload", content=b"x" * TEN_MIB)  # no jobcast limit
    assert (uploaded.status_code, uploaded.json()) == (200, {"size": TEN_MIB})
    missing = await client.get(f"{url}/nowhere")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})  # FastAPI's
    assert "x-request-id" not in missing.headers  # jobcast's plumbing stays on its own paths
    # jobcast's own routes, below the prefix, answer as jobcast does.
    health = await client.get(f"{url}/jobcast/health")
    assert health.json()["status"] == "ok"
    assert "x-request-id" in health.headers
    unknown = await client.get(f"{url}/jobcast/api/jobs/nope", headers=embedded.auth())
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"
    too_big = await client.post(
        f"{url}/jobcast/api/events",
        content=orjson.dumps({"topic": "a", "type": "t", "data": "x" * 2000}),
        headers={**embedded.auth("svc", "service"), "Content-Type": "application/json"},
    )
    assert (too_big.status_code, too_big.json()["error"]) == (413, "payload_too_large")
    invalid = await client.post(
        f"{url}/jobcast/api/jobs", json={"kind": 5}, headers=embedded.auth()
    )
    assert (invalid.status_code, invalid.json()["error"]) == (422, "invalid_input")


async def test_streams_sockets_and_links_live_below_the_prefix(
    embedded: LiveServer, client: httpx.AsyncClient
) -> None:
    url = f"{embedded.url}/jobcast"
    async with EventStream(
        client, f"{url}/api/events", params={"topic": "a"}, headers=embedded.auth()
    ) as stream:
        assert stream.response is not None and stream.response.status_code == 200
        published = await client.post(
            f"{url}/api/events",
            json={"topic": "a", "type": "t", "data": 1},
            headers=embedded.auth("svc", "service"),
        )
        assert published.status_code == 202
        event = await stream.next()
        while event.event is None:  # the opening: its id, no event
            event = await stream.next()
        assert (event.event, event.data, event.id) == ("t", "1", published.json()["id"])
    job = await client.post(
        f"{url}/api/jobs", json={"kind": "demo", "params": {"steps": 1}}, headers=embedded.auth()
    )
    links = job.json()["links"]
    assert links["self"] == f"/jobcast/api/jobs/{job.json()['id']}"
    assert links["ws"] == f"/jobcast/ws/jobs/{job.json()['id']}"
    assert (await client.get(f"{embedded.url}{links['self']}", headers=embedded.auth())).is_success
    socket_url = f"{url.replace('http', 'ws')}/ws/events?token={embedded.token()}"
    async with asyncio.timeout(10), websockets.connect(socket_url) as ws:
        await send(ws, {"op": "subscribe", "topics": ["a"]})
        assert (await receive_op(ws))["op"] == "subscribed"


async def test_the_host_s_principal_override_applies_to_every_jobcast_route(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    jc = Jobcast(make_settings(data_dir=tmp_path, heartbeat_interval=0.2))
    app = host_app(jc, prefix="/jobcast")
    # The host knows its callers by its own means; here: everyone is the service "host".
    app.dependency_overrides[jc.principal] = lambda: Principal("host", Role.SERVICE)
    server = LiveServer(app).start()
    url = f"{server.url}/jobcast"
    try:
        # No credential on any request: the override decides, streams and sockets included.
        async with EventStream(client, f"{url}/api/events", params={"topic": "private/x"}) as s:
            published = await client.post(
                f"{url}/api/events", json={"topic": "private/x", "type": "t", "data": 2}
            )
            assert published.status_code == 202
            event = await s.next()
            while event.event is None:
                event = await s.next()
            assert event.data == "2"
        job = await client.post(f"{url}/api/jobs", json={"kind": "demo", "params": {"steps": 1}})
        assert job.status_code == 202
        assert job.json()["owner"] == "host"
        async with (
            asyncio.timeout(10),
            websockets.connect(f"{url.replace('http', 'ws')}/ws/events") as ws,
        ):
            await send(ws, {"op": "subscribe", "topics": ["private/*"]})
            assert (await receive_op(ws))["op"] == "subscribed"
    finally:
        server.stop()


async def test_a_host_route_that_jobcast_would_shadow_is_refused(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    jc = Jobcast(make_settings(data_dir=tmp_path))
    with pytest.raises(RouteConflict, match="GET /health"):
        host_app(jc)  # the host's / and /health, and jobcast's
    # Leaving out jobcast's page and service routes, nothing clashes.
    jc = Jobcast(make_settings(data_dir=tmp_path))
    server = LiveServer(host_app(jc, dashboard=False, service_routes=False)).start()
    try:
        assert (await client.get(f"{server.url}/")).json() == {"host": "home"}
        assert (await client.get(f"{server.url}/health")).json() == {"host": "healthy"}
        script = await client.get(f"{server.url}/static/jobcast.js")  # the client stays
        assert script.status_code == 200
        job = await client.post(
            f"{server.url}/api/jobs", json={"kind": "demo"}, headers=server.auth()
        )
        assert job.status_code == 202
    finally:
        server.stop()


async def test_a_clashing_route_added_after_install_stops_the_start(tmp_path: Path) -> None:
    jc = Jobcast(make_settings(data_dir=tmp_path))
    app = host_app(jc, prefix="/jobcast")

    @app.get("/jobcast/metrics")
    async def metrics() -> str:
        return "the host's"

    with pytest.raises(RouteConflict, match="GET /jobcast/metrics"):
        async with jc.lifespan(app):
            pass
