"""Extension points for apps that keep their own URLs and formats: ``open_stream`` with a
prelude, event frames and heartbeats of their own; job streams rendered in their own format
(``job_stream``, ``job_socket``); a ``Policy`` subclass; uploads on their own routes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from websockets.asyncio.client import connect

from jobcast import Event, Jobcast, JobUpdate, Principal
from jobcast.jobs import Job
from jobcast.policy import JobAction, Policy
from jobcast.topics import TopicPattern
from tests.jobs_support import submit
from tests.support import EventStream, LiveServer, make_settings
from tests.ws_support import receive_until_closed

FAST = {"steps": 3, "delay": 0.02}
BEAT = b"event: beat\ndata: {}\n\n"


async def publish(server: LiveServer, topic: str, event_type: str, data: Any) -> Event:
    """Publish on the server's own loop (the hub lives there)."""
    event: Event = await asyncio.wrap_future(
        server.run(server.jc.hub.publish(topic, event_type, data))
    )
    return event


def unnamed(event: Event) -> bytes:
    if event.type == "skip":
        return b""
    return b"id: %s\ndata: %s\n\n" % (event.id.encode(), event.data_json)


def render_sse(update: JobUpdate) -> tuple[str, Any] | None:
    if update.type == "snapshot" and update.job["state"] == "succeeded":
        return None
    job = update.job
    return "update", {"type": update.type, "state": job["state"], "progress": job["progress"]}


def render_ws(update: JobUpdate) -> Any:
    return {"type": update.type, "state": update.job["state"], "terminal": update.terminal}


class AuditorPolicy(Policy):
    """Lets the subject ``auditor`` read every job (jobcast's default: only the owner)."""

    def check_job(self, principal: Principal | None, job: Job, action: JobAction) -> None:
        if principal is not None and principal.subject == "auditor" and action == "read":
            return
        super().check_job(principal, job, action)


def custom_app(data_dir: Path, **settings: Any) -> FastAPI:
    values = make_settings(data_dir=data_dir, heartbeat_interval=0.2, **settings)
    jc = Jobcast(values, policy=AuditorPolicy(values.public_topics))
    app = FastAPI(lifespan=jc.lifespan)

    @app.get("/feed")
    async def feed(request: Request) -> Response:
        resume = request.headers.get("last-event-id")
        patterns = (TopicPattern.parse("feed"),)
        stream = await jc.open_stream(
            patterns,
            resume,
            None,
            prelude=b'data: {"hello":true}\n\n',
            event_frame=unnamed,
            heartbeat=lambda: BEAT,
        )
        stream.headers["X-Feed-Version"] = "2"  # an app's own header goes out with the stream
        return stream

    @app.get("/watch/{job_id}")
    async def watch(job_id: str, request: Request) -> Response:
        principal = await jc.principal(request, None)
        kind = request.query_params.get("kind")
        resume = request.headers.get("last-event-id")
        return await jc.job_stream(job_id, principal, resume, kind=kind, render=render_sse)

    @app.websocket("/socket/{job_id}")
    async def socket(websocket: WebSocket, job_id: str) -> None:
        await jc.job_socket(websocket, job_id, render=render_ws)

    @app.post("/upload")
    async def upload(request: Request) -> JSONResponse:
        if not request.headers.get("content-type", "").startswith("multipart/"):
            return JSONResponse({"size": len(await request.body())})
        received = await jc.receive_upload(request)
        received.discard()
        assert received.input is not None
        return JSONResponse({"sha256": received.input.sha256, "fields": received.fields})

    jc.install(app, app_wide=True, upload_paths=["/upload"])  # an app built around jobcast
    return app


@pytest.fixture
def server(tmp_path: Path) -> Any:
    server = LiveServer(custom_app(tmp_path, max_body_bytes=1024, max_upload_bytes=64 * 1024))
    server.start()
    yield server
    server.stop()


async def test_open_stream_writes_the_apps_own_frames(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    async with EventStream(client, f"{server.url}/feed") as stream:
        assert stream.response is not None
        assert stream.response.headers["x-feed-version"] == "2"
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        hello = await stream.next()
        assert (hello.event, hello.data, hello.id) == ("message", '{"hello":true}', None)
        beat = await stream.next()  # a named event instead of the ": ping" comment
        assert (beat.event, beat.data) == ("beat", "{}")
        skipped = await publish(server, "feed", "skip", {"n": 0})
        first = await publish(server, "feed", "news", {"n": 1})
        event = await stream.next()
        while event.event == "beat":
            event = await stream.next()
    assert (event.event, event.data, event.id) == ("message", '{"n":1}', first.id)
    assert skipped.id != first.id
    # A resume replays in the same frames.
    second = await publish(server, "feed", "news", {"n": 2})
    async with EventStream(
        client, f"{server.url}/feed", headers={"Last-Event-ID": first.id}
    ) as resumed:
        assert (await resumed.next()).data == '{"hello":true}'
        replayed = await resumed.next()
    assert (replayed.event, replayed.data, replayed.id) == ("message", '{"n":2}', second.id)


async def test_a_job_stream_rendered_in_the_apps_format(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, server, "demo", FAST)
    url = f"{server.url}/watch/{job['id']}"
    async with EventStream(client, url, headers=server.auth()) as stream:
        events = await stream.until_end()
    assert {event.event for event in events} == {"update"}
    updates = [orjson.loads(event.data or "") for event in events]
    assert updates[0]["type"] == "snapshot" and updates[-1]["type"] == "succeeded"
    # Progress events carry only what changed; the update has the whole job (its state).
    progress = [u for u in updates if u["type"] == "progress"]
    assert progress and all(u["state"] == "running" for u in progress)
    assert updates[-1] == {"type": "succeeded", "state": "succeeded", "progress": 100.0}
    assert all(event.id for event in events[1:])
    # Finished: the renderer skipped the snapshot, so the terminal update alone, then the end.
    async with EventStream(client, url, headers=server.auth()) as late:
        (final,) = await late.until_end()
    assert orjson.loads(final.data or "")["type"] == "succeeded"


async def test_a_job_stream_for_one_kind_and_the_apps_policy(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, server, "demo", FAST)
    url = f"{server.url}/watch/{job['id']}"
    other_kind = await client.get(url, params={"kind": "ingest"}, headers=server.auth())
    assert other_kind.status_code == 404
    assert (await client.get(url, headers=server.auth("bob"))).status_code == 404
    async with EventStream(client, url, headers=server.auth("auditor")) as stream:
        assert (await stream.until_end())[-1].event == "update"
    polled = await client.get(f"{server.url}/api/jobs/{job['id']}", headers=server.auth("auditor"))
    assert polled.status_code == 200  # the policy decides for jobcast's own routes too


async def test_a_job_socket_rendered_in_the_apps_format(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    job = await submit(client, server, "demo", FAST)
    url = f"ws://{server.host}:{server.port}/socket/{job['id']}?token={server.token()}"
    async with connect(url) as ws:
        messages = await receive_until_closed(ws)
        assert ws.close_code == 1000
    assert messages[0]["type"] == "snapshot"
    assert messages[-1] == {"type": "succeeded", "state": "succeeded", "terminal": True}
    assert all("op" not in message for message in messages)  # no jobcast pings or ops


async def test_uploads_on_the_apps_own_route(
    server: LiveServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    content = b"x" * 10_000  # over the JSON body limit, under the upload limit
    uploaded = await client.post(
        f"{server.url}/upload", files={"file": ("a.bin", content)}, data={"note": "hi"}
    )
    assert uploaded.status_code == 200
    assert uploaded.json()["fields"] == {"note": "hi"}
    too_big = await client.post(f"{server.url}/upload", files={"file": ("b.bin", b"x" * 70_000)})
    assert too_big.status_code == 413
    # Other bodies on an upload route keep the JSON body limit.
    json_body = await client.post(f"{server.url}/upload", content=b"{}" + b" " * 2000)
    assert json_body.status_code == 413
    assert list((tmp_path / "uploads").glob(".incoming-*")) == []
