"""The sermon transcription example: the front end's requests against a real server, with each
video a Celery task run by a real `celery worker` (prefork, on RabbitMQ) that reports to the
video's job and publishes to browsers over HTTP only, with a service token."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from examples.sermons.app import create_app
from examples.sermons.config import SermonsConfig
from examples.sermons.tasks import sender
from jobcast.wire import ServerSentEvent
from tests.examples.conftest import Serve
from tests.scale_support import ROOT
from tests.services import needs_services
from tests.support import SECRET, EventStream, LiveServer, eventually, wait_until

pytestmark = [needs_services, pytest.mark.timeout(120)]

FRONTEND = "http://localhost:5173"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UNAVAILABLE = "unavailable"  # 11 characters: a valid YouTube id the fake downloader refuses


class Workers:
    """`celery worker` processes, one per server (its own queue), killed and their queues
    deleted at teardown."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[subprocess.Popen[bytes], str]] = []

    def start(self, server: LiveServer, queue: str, delay: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBCAST_", "SERMONS_"))}
        env.update(
            PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
            SERMONS_API_URL=server.url,
            SERMONS_SERVICE_TOKEN=server.token("sermons-worker", "service"),
            SERMONS_STEP_DELAY=str(delay),
            SERMONS_UNAVAILABLE_IDS=UNAVAILABLE,
            C_FORCE_ROOT="1",  # CI containers run as root
        )
        args = [sys.executable, "-m", "celery", "-A", "examples.sermons.tasks", "worker"]
        args += ["-P", "prefork", "-c", "2", "-Q", queue, "-n", f"{queue}@%h", "-l", "info"]
        args += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        log = (self.logs / f"{queue}.log").open("wb")
        process = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        self.started.append((process, queue))

    def stop(self) -> None:
        for process, queue in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # nothing here is about shutting down
            process.wait(10)
            with sender.connection_for_write() as conn:
                conn.default_channel.queue_delete(queue)


def starter(serve: Serve, data_dir: Path, workers: Workers) -> Callable[..., LiveServer]:
    def start(delay: float = 0.01, **config: Any) -> LiveServer:
        queue = f"sermons-{uuid.uuid4().hex[:10]}"
        values: dict[str, Any] = {"heartbeat_interval": 0.2, "celery_queue": queue}
        values.update(config)
        app = create_app(
            SermonsConfig(**values), data_dir=data_dir, jwt_secret=SECRET, _env_file=None
        )
        server = serve(app)
        workers.start(server, queue, delay)  # the worker reaches this service by its URL
        return server

    return start


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    started = Workers(tmp_path_factory.mktemp("workers"))
    yield started
    started.stop()


@pytest.fixture
def start(serve: Serve, tmp_path: Path, workers: Workers) -> Callable[..., LiveServer]:
    """A server of its own (and its worker), with configuration overrides."""
    return starter(serve, tmp_path, workers)


@pytest.fixture(scope="module")
def server(
    serve_shared: Serve, tmp_path_factory: pytest.TempPathFactory, workers: Workers
) -> LiveServer:
    """The server most tests share; each test uses subjects of its own."""
    return starter(serve_shared, tmp_path_factory.mktemp("sermons"), workers)()


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

    # A tracked task's end reaches streams just before the store (docs/integrations.md).
    async def stored() -> Any:
        got = (await client.get(f"{server.url}/api/v2/videos/{video['id']}")).json()
        return got if got["status"] == "PROCESSED" else None

    got = await eventually(stored, timeout=5, interval=0.02)
    assert got["progress"] == 100
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

    async def stored() -> Any:
        url = f"{server.url}/api/v2/videos/{video['id']}"
        got = (await client.get(url, headers=server.auth())).json()
        return got if got["status"] == "FAILED" else None

    assert "unavailable" in (await eventually(stored, timeout=5, interval=0.02))["message"]


async def test_deleting_a_video_stops_its_worker(
    start: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = start(delay=5.0)  # the worker would take half a minute
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
