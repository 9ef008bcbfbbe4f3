"""jobcast inside someone else's FastAPI app: the README's example, run as written."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
import websockets

import jobcast
from tests.support import SECRET, EventStream, LiveServer

README = Path(__file__).parent.parent / "README.md"


def readme_example() -> str:
    text = README.read_text()
    match = re.search(
        r"<!-- embed-example:start -->\n```python\n(.*?)```\n<!-- embed-example:end -->", text, re.S
    )
    assert match, "the README lost its embedding example"
    return match.group(1)


async def test_readme_embedding_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: httpx.AsyncClient
) -> None:
    monkeypatch.setenv("JOBCAST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JOBCAST_JWT_SECRET", SECRET)
    namespace: dict[str, object] = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    server = LiveServer(namespace["app"]).start()  # type: ignore[arg-type]
    try:
        url = f"{server.url}/jobcast/api/events"  # the README mounts jobcast under a prefix
        async with EventStream(
            client, url, params={"topic": "videos/*"}, headers=server.auth()
        ) as events:
            response = await client.post(
                f"{server.url}/videos/7/status", params={"status": "PROCESSED"}
            )
            assert response.status_code == 200
            event = await events.next()
            assert (event.event, event.data, event.id) == (
                "video.status",
                '{"status":"PROCESSED"}',
                response.json()["event_id"],
            )
    finally:
        server.stop()


def test_public_api_is_curated() -> None:
    assert jobcast.__all__ == sorted(jobcast.__all__)
    assert {"Jobcast", "Settings", "create_app", "Hub", "Event", "JobcastError"} <= set(
        jobcast.__all__
    )
    for name in jobcast.__all__:
        assert hasattr(jobcast, name)


async def test_middleware_added_after_install_sees_streams_sockets_and_publishes(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    """The README's promise about the fast entrance: added after ``install()``, an app's own
    middleware sees jobcast's streams, sockets and publishes; added before, it does not."""
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Receive, Scope, Send

    from tests.support import make_settings

    seen: dict[str, list[str]] = {"before": [], "after": []}

    class Audit:
        def __init__(self, app: ASGIApp, name: str) -> None:
            self.app, self.name = app, name

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] in ("http", "websocket"):
                seen[self.name].append(f"{scope.get('method', 'WS')} {scope['path']}")
            await self.app(scope, receive, send)

    jc = jobcast.Jobcast(make_settings(data_dir=tmp_path, heartbeat_interval=0.2))
    app = FastAPI(lifespan=jc.lifespan)
    app.add_middleware(Audit, name="before")
    jc.install(app)
    app.add_middleware(Audit, name="after")
    server = LiveServer(app).start()
    try:
        url = f"{server.url}/api/events"
        async with EventStream(client, url, params={"topic": "a"}, headers=server.auth()):
            published = await client.post(
                url, json={"topic": "a", "type": "t"}, headers=server.auth("svc", "service")
            )
            assert published.status_code == 202
        socket_url = f"{server.url.replace('http', 'ws')}/ws/events?token={server.token()}"
        async with asyncio.timeout(10), websockets.connect(socket_url) as ws:
            await ws.send('{"op": "ping"}')
            await ws.recv()
    finally:
        server.stop()
    assert seen["after"] == ["GET /api/events", "POST /api/events", "WS /ws/events"]
    assert seen["before"] == []
