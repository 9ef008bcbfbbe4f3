"""The sermon transcription example: the front end's requests against a real server, with the
transcription worker running as a separate process that publishes over HTTP."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from examples.sermons.app import create_app
from examples.sermons.config import SermonsConfig
from jobcast.wire import ServerSentEvent
from tests.examples.conftest import Serve, free_port
from tests.support import SECRET, EventStream, LiveServer, wait_until

FRONTEND = "http://localhost:5173"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UNAVAILABLE = "unavailable"  # 11 characters: a valid YouTube id the fake downloader refuses


def starter(serve: Serve, data_dir: Path) -> Callable[..., LiveServer]:
    def start(**config: Any) -> LiveServer:
        port = free_port()  # the worker publishes to this service's own URL
        values: dict[str, Any] = {
            "internal_url": f"http://127.0.0.1:{port}",
            "heartbeat_interval": 0.2,
            "step_delay": 0.01,
            "unavailable_ids": frozenset({UNAVAILABLE}),
        }
        values.update(config)
        app = create_app(
            SermonsConfig(**values), data_dir=data_dir, jwt_secret=SECRET, _env_file=None
        )
        return serve(app, port)

    return start


@pytest.fixture
def start(serve: Serve, tmp_path: Path) -> Callable[..., LiveServer]:
    """A server of its own, with configuration overrides."""
    return starter(serve, tmp_path)


@pytest.fixture(scope="module")
def server(serve_shared: Serve, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """The server most tests share; each test uses subjects of its own."""
    return starter(serve_shared, tmp_path_factory.mktemp("sermons"))()


async def log_in(client: httpx.AsyncClient, server: LiveServer, sub: str = "alice") -> str:
    """The front end's sign-in: a cookie session; returns the CSRF token to send back."""
    login = await client.post(f"{server.url}/api/auth/session", headers=server.auth(sub))
    assert login.status_code == 200
    return login.headers["X-CSRF-Token"]


async def until_event(
    stream: EventStream, accept: Callable[[ServerSentEvent], bool], timeout: float = 10.0
) -> list[ServerSentEvent]:
    """Events (heartbeats left out) up to and including the first that ``accept`` accepts."""
    seen = []
    while True:
        event = await stream.next(timeout)
        if event.event == "heartbeat":
            continue
        seen.append(event)
        if accept(event):
            return seen


def data(event: ServerSentEvent) -> Any:
    assert event.data is not None
    return orjson.loads(event.data)


def processed(video_id: str) -> Callable[[ServerSentEvent], bool]:
    return lambda e: e.event == "summary.ready" and data(e)["video_id"] == video_id


async def test_curl_shows_named_heartbeats_with_a_json_timestamp(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    # curl -N http://localhost:8000/api/v2/events/stream
    async with EventStream(client, f"{server.url}/api/v2/events/stream") as stream:
        assert stream.response is not None
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        first, second = await stream.take(2)
    for beat in (first, second):
        assert beat.event == "heartbeat" and beat.id is None
        body = data(beat)
        assert set(body) == {"type", "timestamp"} and body["type"] == "heartbeat"
        assert TIMESTAMP.match(body["timestamp"])


async def test_health_counts_connected_clients(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    url = f"{server.url}/api/v2/events/health"
    assert (await client.get(url)).json() == {
        "status": "healthy",
        "service": "sse_events",
        "connected_clients": 0,
    }
    async with EventStream(client, f"{server.url}/api/v2/events/stream") as stream:
        await stream.next()
        assert (await client.get(url)).json()["connected_clients"] == 1
    await wait_until(lambda: server.jc.hub.subscriber_count == 0)


async def test_a_submitted_video_is_processed_by_the_worker_and_broadcast(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    csrf = await log_in(client, server, "carol")
    headers = {"Origin": FRONTEND}
    listed = await client.get(f"{server.url}/api/v2/videos", headers=headers)
    assert listed.status_code == 200 and listed.json() == []
    assert listed.headers["X-CSRF-Token"] == csrf  # the front end reads it from any response
    assert listed.headers["access-control-allow-origin"] == FRONTEND
    async with EventStream(client, f"{server.url}/api/v2/events/stream", headers=headers) as stream:
        submitted = await client.post(
            f"{server.url}/api/v2/videos",
            json={"youtube_id": "dQw4w9WgXcQ", "title": "Sunday service"},
            headers={**headers, "X-CSRF-Token": csrf},
        )
        assert submitted.status_code == 202
        video = submitted.json()
        assert video["status"] == "QUEUED" and video["youtube_id"] == "dQw4w9WgXcQ"
        events = await until_event(stream, processed(video["id"]))
    # Other tests' videos may still be processing: this one's events, in order.
    events = [e for e in events if data(e)["video_id"] == video["id"]]
    statuses = [data(e) for e in events if e.event == "video.status"]
    for status in statuses:
        assert set(status) == {"type", "timestamp", "video_id", "status", "progress", "message"}
        assert status["type"] == "video.status" and status["video_id"] == video["id"]
        assert TIMESTAMP.match(status["timestamp"])
    assert [s["status"] for s in statuses] == ["QUEUED"] + ["PROCESSING"] * 8 + ["PROCESSED"]
    progress = [s["progress"] for s in statuses]
    assert progress == sorted(progress) and progress[-1] == 100
    summary = data(events[-1])
    assert {"themes", "passages", "citations", "speaker", "word_count", "key_points"} <= set(
        summary
    )
    assert summary["type"] == "summary.ready" and summary["word_count"] > 0
    assert all(e.id for e in events)  # every event can be resumed after

    # The job ends right after the worker's last report; its own stream says when.
    async with EventStream(
        client, f"{server.url}/api/jobs/{video['id']}/events", headers=server.auth("carol")
    ) as job_events:
        assert (await job_events.until_end())[-1].event == "succeeded"
    got = (await client.get(f"{server.url}/api/v2/videos/{video['id']}")).json()
    assert got["status"] == "PROCESSED" and got["progress"] == 100
    assert got["title"] == "Sermon dQw4w9WgXcQ" and got["summary"]["speaker"] == summary["speaker"]


async def test_the_worker_publishes_through_the_authenticated_endpoint_only(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    event = {"topic": "videos/1", "type": "video.status", "data": {"status": "PROCESSED"}}
    anonymous = await client.post(f"{server.url}/api/events", json=event)
    assert anonymous.status_code == 401
    user = await client.post(f"{server.url}/api/events", json=event, headers=server.auth())
    assert user.status_code == 403
    worker = server.auth("sermons-worker", role="service")
    assert (await client.post(f"{server.url}/api/events", json=event, headers=worker)).is_success


async def test_subscribers_filter_by_video_id_and_resume_after_the_submission(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    auth = server.auth()
    first = (
        await client.post(
            f"{server.url}/api/v2/videos", json={"youtube_id": "aaaaaaaaaaa"}, headers=auth
        )
    ).json()
    other = (
        await client.post(
            f"{server.url}/api/v2/videos", json={"youtube_id": "bbbbbbbbbbb"}, headers=auth
        )
    ).json()
    # Subscribed late, resuming after the submission: nothing of this video is missed.
    async with EventStream(
        client,
        f"{server.url}/api/v2/events/stream",
        params={"video_id": first["id"]},
        headers={"Last-Event-ID": first["last_event_id"]},
    ) as stream:
        events = await until_event(stream, processed(first["id"]))
    assert {data(e)["video_id"] for e in events} == {first["id"]}
    assert data(events[0])["status"] == "QUEUED"
    assert data(events[-2])["status"] == "PROCESSED"
    assert other["id"] != first["id"]


async def test_an_unavailable_video_fails_with_an_error_event(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    async with EventStream(client, f"{server.url}/api/v2/events/stream") as stream:
        video = (
            await client.post(
                f"{server.url}/api/v2/videos",
                json={"youtube_id": UNAVAILABLE},
                headers=server.auth(),
            )
        ).json()
        events = await until_event(
            stream, lambda e: e.event == "error" and data(e)["video_id"] == video["id"]
        )
    events = [e for e in events if data(e)["video_id"] == video["id"]]
    failed = data(events[-2])
    assert (failed["status"], failed["video_id"]) == ("FAILED", video["id"])
    error = data(events[-1])
    assert error["code"] == "video_unavailable" and "unavailable" in error["message"]
    assert set(error) == {"type", "timestamp", "video_id", "code", "message"}
    async with EventStream(
        client, f"{server.url}/api/jobs/{video['id']}/events", headers=server.auth()
    ) as job_events:
        assert (await job_events.until_end())[-1].event == "failed"
    got = await client.get(f"{server.url}/api/v2/videos/{video['id']}", headers=server.auth())
    assert got.json()["status"] == "FAILED" and "unavailable" in got.json()["message"]


async def test_deleting_a_video_stops_its_worker(
    start: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = start(step_delay=5.0)  # the worker would take half a minute
    auth = server.auth()
    async with EventStream(client, f"{server.url}/api/v2/events/stream") as stream:
        video = (
            await client.post(
                f"{server.url}/api/v2/videos", json={"youtube_id": "ccccccccccc"}, headers=auth
            )
        ).json()
        await until_event(stream, lambda e: data(e)["status"] == "PROCESSING")
        deleted = await client.delete(f"{server.url}/api/v2/videos/{video['id']}", headers=auth)
        assert deleted.status_code == 204
        events = await until_event(stream, lambda e: e.event == "error")
    assert data(events[-2])["status"] == "FAILED"
    assert data(events[-1])["message"] == "Processing stopped"
    gone = await client.get(f"{server.url}/api/v2/videos/{video['id']}", headers=auth)
    assert gone.status_code == 404


async def test_videos_are_private_to_their_owner(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    video = (
        await client.post(
            f"{server.url}/api/v2/videos", json={"youtube_id": "ddddddddddd"}, headers=server.auth()
        )
    ).json()
    bob = server.auth("bob")
    assert (await client.get(f"{server.url}/api/v2/videos", headers=bob)).json() == []
    url = f"{server.url}/api/v2/videos/{video['id']}"
    assert (await client.get(url, headers=bob)).status_code == 404
    assert (await client.delete(url, headers=bob)).status_code == 404
    assert (await client.get(url)).status_code == 401
    admin = await client.get(f"{server.url}/api/v2/videos", headers=server.auth("root", "admin"))
    assert video["id"] in [v["id"] for v in admin.json()]
    bad = await client.post(
        f"{server.url}/api/v2/videos", json={"youtube_id": "not an id"}, headers=server.auth()
    )
    assert bad.status_code == 422


async def test_cookie_session_changes_need_the_csrf_token(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    csrf = await log_in(client, server)
    url = f"{server.url}/api/v2/videos"
    body = {"youtube_id": "eeeeeeeeeee"}
    missing = await client.post(url, json=body)
    assert missing.status_code == 403 and "X-CSRF-Token" in missing.json()["message"]
    wrong = await client.post(url, json=body, headers={"X-CSRF-Token": "forged"})
    assert wrong.status_code == 403
    foreign = await client.post(
        url, json=body, headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
    )
    assert foreign.status_code == 403
    good = await client.post(url, json=body, headers={"X-CSRF-Token": csrf, "Origin": FRONTEND})
    assert good.status_code == 202
    delete = await client.delete(f"{url}/{good.json()['id']}")
    assert delete.status_code == 403


async def test_csrf_exempt_paths_and_cors_follow_the_environment(
    start: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    config = SermonsConfig.from_env(
        {
            "FRONTEND_URL": "http://localhost:3000",
            "CSRF_EXEMPT_PATHS": "/api/v2/events/stream, /api/v2/videos",
            "SSE_HEARTBEAT_INTERVAL": "0.2",
        }
    )
    assert config.heartbeat_interval == 0.2
    server = start(frontend_url=config.frontend_url, csrf_exempt_paths=config.csrf_exempt_paths)
    await log_in(client, server)
    exempt = await client.post(f"{server.url}/api/v2/videos", json={"youtube_id": "fffffffffff"})
    assert exempt.status_code == 202
    preflight = await client.options(
        f"{server.url}/api/v2/videos",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-csrf-token",
        },
    )
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    other = await client.get(f"{server.url}/api/v2/events/health", headers={"Origin": FRONTEND})
    assert "access-control-allow-origin" not in other.headers
