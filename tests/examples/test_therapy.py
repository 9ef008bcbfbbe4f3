"""The therapy sessions example: status over SSE and WebSocket with the patient, therapist and
admin rules, against a real server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from examples.therapy.app import create_app
from examples.therapy.config import TherapyConfig, parse_assignments
from jobcast.wire import ServerSentEvent
from tests.examples.conftest import Serve
from tests.support import SECRET, EventStream, LiveServer
from tests.ws_support import receive_until_closed, send

FIELDS = {"session_id", "status", "progress", "message", "updated_at"}
RECORDING = b"RIFF....WAVEfmt " + bytes(2048)


def starter(serve: Serve, data_dir: Path) -> Callable[..., LiveServer]:
    def start(step_delay: float = 0.02, **settings: Any) -> LiveServer:
        config = TherapyConfig(
            assignments=parse_assignments("dr-grey:pat-1;dr-house:pat-2,pat-3"),
            step_delay=step_delay,
        )
        values: dict[str, Any] = {"heartbeat_interval": 0.2, "ws_auth_timeout": 2.0}
        values.update(settings)
        app = create_app(config, data_dir=data_dir, jwt_secret=SECRET, _env_file=None, **values)
        return serve(app)

    return start


@pytest.fixture
def start(serve: Serve, tmp_path: Path) -> Callable[..., LiveServer]:
    """A server of its own, with configuration overrides."""
    return starter(serve, tmp_path)


@pytest.fixture(scope="module")
def server(serve_shared: Serve, tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    """The server most tests share (sessions are independent of each other)."""
    return starter(serve_shared, tmp_path_factory.mktemp("therapy"))()


async def record(
    client: httpx.AsyncClient,
    server: LiveServer,
    who: str = "pat-1",
    patient: str | None = None,
    audio: bytes = RECORDING,
) -> httpx.Response:
    fields = {"patient_id": patient} if patient else {}
    return await client.post(
        f"{server.url}/api/sessions",
        headers=server.auth(who),
        data=fields,
        files={"file": ("session.wav", audio, "audio/wav")},
    )


def stream_url(server: LiveServer, session_id: str) -> str:
    return f"{server.url}/api/sessions/{session_id}/status/stream"


def ws_url(server: LiveServer, session_id: str) -> str:
    return f"ws://{server.host}:{server.port}/api/sessions/{session_id}/status/ws"


def data(event: ServerSentEvent) -> Any:
    assert event.data is not None
    return orjson.loads(event.data)


async def test_a_patient_follows_their_session_until_it_completes(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    created = await record(client, server)
    assert created.status_code == 201
    session = created.json()
    assert set(session) == FIELDS and session["status"] == "queued"
    async with EventStream(
        client, stream_url(server, session["session_id"]), headers=server.auth("pat-1")
    ) as stream:
        assert stream.response is not None and stream.response.status_code == 200
        events = await stream.until_end()
    names = [event.event for event in events]
    assert set(names[:-1]) == {"progress"} and names[-1] == "complete"
    bodies = [data(event) for event in events]
    assert all(set(body) == FIELDS for body in bodies)
    assert all(body["session_id"] == session["session_id"] for body in bodies)
    progress = [body["progress"] for body in bodies]
    assert progress == sorted(progress)
    # Progress is coalesced (the latest report wins), so which stages show depends on timing.
    stages = {"uploading", "transcribing", "analyzing", "writing_notes"}
    statuses = {body["status"] for body in bodies[:-1]}
    assert statuses & stages and statuses <= {"queued", "processing", *stages}
    assert bodies[-1]["status"] == "processed" and bodies[-1]["progress"] == 100
    assert bodies[-1]["message"] == "Session processing complete"
    polled = await client.get(
        f"{server.url}/api/sessions/{session['session_id']}/status", headers=server.auth("pat-1")
    )
    assert polled.json() == bodies[-1]


@pytest.mark.parametrize(
    ("who", "role", "status"),
    [
        ("pat-1", "user", 200),  # the patient
        ("dr-grey", "user", 200),  # their therapist
        ("root", "admin", 200),
        ("pat-2", "user", 403),  # another patient
        ("dr-house", "user", 403),  # a therapist of other patients
        (None, None, 401),
    ],
)
async def test_who_may_watch_a_session(
    server: LiveServer, client: httpx.AsyncClient, who: str | None, role: str, status: int
) -> None:
    session_id = (await record(client, server)).json()["session_id"]
    headers = server.auth(who, role) if who else {}
    for url in (stream_url(server, session_id), f"{server.url}/api/sessions/{session_id}/status"):
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == status, url
            if status != 200:
                body = orjson.loads(await response.aread())
                assert body["error"] in {"forbidden", "unauthorized"}


async def test_unknown_sessions_are_404_and_need_a_token_first(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    url = stream_url(server, "00000000-0000-0000-0000-000000000000")
    assert (await client.get(url, headers=server.auth("root", "admin"))).status_code == 404
    assert (await client.get(url)).status_code == 401
    # A job of another kind is not a session.
    other = await client.post(
        f"{server.url}/api/jobs",
        json={"kind": "demo", "params": {"steps": 1, "delay": 0}},
        headers=server.auth("pat-1"),
    )
    assert (
        await client.get(stream_url(server, other.json()["id"]), headers=server.auth("pat-1"))
    ).status_code == 404


async def test_a_late_client_gets_the_final_status_at_once(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    session_id = (await record(client, server)).json()["session_id"]
    headers = server.auth("dr-grey")
    async with EventStream(client, stream_url(server, session_id), headers=headers) as stream:
        await stream.until_end()
    async with EventStream(client, stream_url(server, session_id), headers=headers) as late:
        (event,) = await late.until_end(timeout=2)
    assert event.event == "complete" and data(event)["status"] == "processed"


async def test_a_failed_session_ends_with_an_error_event(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    session_id = (await record(client, server, audio=b"")).json()["session_id"]
    async with EventStream(
        client, stream_url(server, session_id), headers=server.auth("pat-1")
    ) as stream:
        events = await stream.until_end()
    assert events[-1].event == "error"
    body = data(events[-1])
    assert set(body) == FIELDS | {"error"}
    assert body["status"] == "failed" and body["message"] == "Processing failed"
    assert body["error"] == "the recording is empty"


async def test_heartbeat_comments_while_nothing_happens(
    start: Callable[..., LiveServer], client: httpx.AsyncClient
) -> None:
    server = start(step_delay=30.0, heartbeat_interval=0.1)
    session_id = (await record(client, server)).json()["session_id"]
    async with EventStream(
        client, stream_url(server, session_id), headers=server.auth("pat-1"), comments=True
    ) as stream:
        first = await stream.next()
        assert first.event == "progress"
        beat = await stream.next(timeout=2)
        while beat.comment is None:  # the job's state change may come first
            beat = await stream.next(timeout=2)
    assert beat.comment == "heartbeat"


async def test_the_websocket_twin_sends_the_same_statuses_then_closes(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    session_id = (await record(client, server)).json()["session_id"]
    async with connect(ws_url(server, session_id), additional_headers=server.auth("dr-grey")) as ws:
        messages = await receive_until_closed(ws)
        assert ws.close_code == 1000
    assert all(set(m) == {"event", "data"} and set(m["data"]) == FIELDS for m in messages)
    assert [m["event"] for m in messages][-1] == "complete"
    assert {m["event"] for m in messages[:-1]} == {"progress"}
    # A finished session: the final status at once, then the close.
    async with connect(f"{ws_url(server, session_id)}?token={server.token('pat-1')}") as ws:
        (final,) = await receive_until_closed(ws, timeout=2)
        assert ws.close_code == 1000
    assert final == messages[-1]


@pytest.mark.parametrize(("who", "code"), [("pat-2", 4403), ("dr-house", 4403), (None, 4401)])
async def test_the_websocket_refuses_with_a_reason(
    server: LiveServer, client: httpx.AsyncClient, who: str | None, code: int
) -> None:
    session_id = (await record(client, server)).json()["session_id"]
    async with connect(ws_url(server, session_id)) as ws:
        await send(ws, {"op": "auth", "token": server.token(who) if who else "not-a-token"})
        (error,) = await receive_until_closed(ws)
        assert ws.close_code == code
    assert error["op"] == "error"
    async with connect(f"{ws_url(server, 'no-such-session')}?token={server.token()}") as ws:
        await receive_until_closed(ws)
        assert ws.close_code == 4404


async def test_therapists_record_sessions_for_their_patients_only(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    mine = await record(client, server, who="dr-grey", patient="pat-1")
    assert mine.status_code == 201
    theirs = await record(client, server, who="dr-grey", patient="pat-2")
    assert theirs.status_code == 403
    other = await record(client, server, who="pat-2", patient="pat-1")
    assert other.status_code == 403
    missing = await client.post(
        f"{server.url}/api/sessions", headers=server.auth("pat-1"), data={"patient_id": "pat-1"}
    )
    assert missing.status_code == 422
    assert (await client.post(f"{server.url}/api/sessions")).status_code == 401


async def test_browsers_stream_with_a_one_use_ticket(
    server: LiveServer, client: httpx.AsyncClient
) -> None:
    session_id = (await record(client, server)).json()["session_id"]
    ticket = await client.post(
        f"{server.url}/api/auth/ticket",
        json={"topics": [f"jobs/{session_id}"]},
        headers=server.auth("dr-grey"),
    )
    assert ticket.status_code == 200
    url = stream_url(server, session_id)
    async with EventStream(client, url, params={"ticket": ticket.json()["ticket"]}) as stream:
        assert (await stream.until_end())[-1].event == "complete"
    spent = await client.get(url, params={"ticket": ticket.json()["ticket"]})
    assert spent.status_code == 401
