"""``jobcast.client``: both clients end to end against a real server, and the typed errors."""

from __future__ import annotations

import ast
import inspect
import json
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import jobcast.client as client_module
from jobcast.client import (
    AsyncClient,
    AuthError,
    BadRequest,
    Client,
    ConflictError,
    ConnectionFailed,
    Event,
    ForbiddenError,
    JobState,
    NotFoundError,
    WaitTimeout,
)
from jobcast.server.app import create_app
from tests.support import LiveServer, make_settings

DEMO = {"steps": 4, "delay": 0.05}


def events_of(items: list[object]) -> list[Event]:
    return [item for item in items if isinstance(item, Event)]


def test_public_api_is_sorted_and_complete() -> None:
    assert client_module.__all__ == sorted(client_module.__all__)
    for name in client_module.__all__:
        assert hasattr(client_module, name)


def test_the_client_never_imports_the_server() -> None:
    for path in Path(client_module.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("jobcast.server"), path.name
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("jobcast.server") for a in node.names), path.name


def test_sync_client_submits_watches_and_lists(server: LiveServer) -> None:
    with Client(server.url, token=server.token("alice")) as client:
        job = client.submit("demo", DEMO)
        assert job.kind == "demo"
        assert job.state in (JobState.QUEUED, JobState.RUNNING)
        events = events_of(list(client.watch(job.id)))
        assert events[0].type == "snapshot"
        assert events[-1].type == "succeeded"
        assert events[-1].job is not None
        assert events[-1].job.result == {"steps": 4}
        ids = [event.id for event in events if event.id and event.type != "snapshot"]
        assert len(ids) == len(set(ids))
        progress = [event.data["progress"] for event in events if event.type == "progress"]
        assert progress == sorted(progress)
        assert client.get(job.id).state is JobState.SUCCEEDED
        assert client.wait(job.id, timeout=5).state is JobState.SUCCEEDED
        page = client.list(state="succeeded", kind="demo")
        assert [listed.id for listed in page.jobs] == [job.id]
        assert client.list(state=["running", "queued"]).jobs == []
        with pytest.raises(ConflictError) as caught:
            client.cancel(job.id)
        assert caught.value.status == 409
        client.delete(job.id)
        with pytest.raises(NotFoundError):
            client.get(job.id)


def test_sync_cancel_and_wait_timeout(server: LiveServer) -> None:
    with Client(server.url, token=server.token("alice")) as client:
        job = client.submit("demo", {"steps": 50, "delay": 0.2})
        with pytest.raises(WaitTimeout):
            client.wait(job.id, timeout=0.3)
        assert client.cancel(job.id).id == job.id
        assert client.wait(job.id, timeout=5).state is JobState.CANCELLED


def test_sync_upload(server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "recording.bin"
    path.write_bytes(b"x" * 100_000)
    with Client(server.url, token=server.token("alice")) as client:
        job = client.submit("ingest", file=path)
        assert job.input is not None
        assert job.input["filename"] == "recording.bin"
        assert job.input["size"] == 100_000
        assert client.wait(job.id, timeout=10).state is JobState.SUCCEEDED
        other = client.submit("ingest", file=("inline.bin", b"abc"))
        assert other.input is not None and other.input["size"] == 3


def test_sync_publish_and_subscribe(server: LiveServer) -> None:
    with Client(server.url, token=server.token("svc", "service")) as client:
        first = client.publish("videos/1", "video.status", {"n": 0})
        stream = client.subscribe(["videos/1"], last_event_id=first)
        ids = [client.publish("videos/1", "video.status", {"n": n}) for n in (1, 2)]
        got = [next(stream), next(stream)]
        stream.close()
        assert [event.id for event in events_of(got)] == ids
        assert [event.data for event in events_of(got)] == [{"n": 1}, {"n": 2}]


async def test_async_client_end_to_end(server: LiveServer) -> None:
    async with AsyncClient(server.url, token=server.token("svc", "service")) as client:
        job = await client.submit("demo", DEMO)
        items = [item async for item in client.watch(job.id)]
        events = events_of(items)
        assert (events[0].type, events[-1].type) == ("snapshot", "succeeded")
        assert (await client.wait(job.id, timeout=5)).result == {"steps": 4}
        assert (await client.get(job.id)).progress == 100.0
        assert [j.id for j in (await client.list(kind="demo")).jobs] == [job.id]
        first = await client.publish("videos/2", "video.status", {"n": 0})
        stream = client.subscribe("videos/2", last_event_id=first)
        published = await client.publish("videos/2", "video.status", {"n": 1})
        item = await anext(stream)
        await stream.aclose()
        assert isinstance(item, Event)
        assert (item.id, item.type, item.data) == (published, "video.status", {"n": 1})
        slow = await client.submit("demo", {"steps": 20, "delay": 0.2})
        with pytest.raises(WaitTimeout):
            await client.wait(slow.id, timeout=0.2)
        assert (await client.cancel(slow.id)).id == slow.id


def test_typed_errors(server: LiveServer) -> None:
    with Client(server.url) as anonymous, pytest.raises(AuthError) as unauthorized:
        anonymous.list()
    assert unauthorized.value.status == 401
    assert unauthorized.value.error == "unauthorized"
    with Client(server.url, token="not-a-jwt") as bad, pytest.raises(AuthError) as invalid:
        bad.list()
    assert invalid.value.reason
    with Client(server.url, token=server.token("alice")) as client:
        with pytest.raises(ForbiddenError) as forbidden:
            client.publish("videos/1", "video.status", {})
        assert (forbidden.value.status, forbidden.value.error) == (403, "forbidden")
        with pytest.raises(NotFoundError) as missing:
            client.get("ffffffffffffffff000000")
        assert missing.value.status == 404
        assert missing.value.message
        with pytest.raises(BadRequest) as invalid_kind:
            client.submit("no-such-kind", {})
        assert (invalid_kind.value.status, invalid_kind.value.error) == (422, "invalid_input")
        with pytest.raises(NotFoundError):
            next(iter(client.watch("ffffffffffffffff000000")))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", token="t") as nowhere, pytest.raises(ConnectionFailed):
        nowhere.get("x")


async def test_in_process_app_through_an_injected_transport(tmp_path: Path) -> None:
    app = create_app(make_settings(data_dir=tmp_path))
    async with app.router.lifespan_context(app):
        token = app.state.jobcast.tokens.mint("alice", role="user")
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient("http://jobcast", token=token, transport=transport) as client:
            job = await client.submit("demo", {"steps": 1, "delay": 0})
            assert (await client.get(job.id)).id == job.id


def test_token_may_be_a_function(server: LiveServer) -> None:
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        return server.token("alice")

    make: Callable[[], Client] = lambda: Client(server.url, token=token)  # noqa: E731
    with make() as client:
        client.list()
        client.list()
    assert len(calls) == 2


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_the_twins_expose_the_same_public_methods() -> None:
    sync, asynchronous = public_methods(Client), public_methods(AsyncClient)
    assert sync.pop("close") and asynchronous.pop("aclose")  # the one name that differs
    assert sorted(sync) == sorted(asynchronous)
    for name, signature in sync.items():
        twin = asynchronous[name]
        shape = [(p.name, p.kind, p.default) for p in signature.parameters.values()]
        assert shape == [(p.name, p.kind, p.default) for p in twin.parameters.values()], name


async def test_async_upload(server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "recording.bin"
    path.write_bytes(b"y" * 50_000)
    async with AsyncClient(server.url, token=server.token("alice")) as client:
        job = await client.submit("ingest", file=path)
        assert job.input is not None
        assert (job.input["filename"], job.input["size"]) == ("recording.bin", 50_000)
        with path.open("rb") as handle:
            opened = await client.submit("ingest", {}, file=handle)
        assert opened.input is not None and opened.input["filename"] == "recording.bin"
        inline = await client.submit("ingest", file=("inline.txt", b"a\nb\n"))
        assert inline.input is not None and inline.input["size"] == 4
        result = (await client.wait(inline.id, timeout=10)).result
        assert result is not None
        assert (result["lines"], result["size"]) == (2, 4)


def fake_api(seen: list[httpx.Request]) -> httpx.MockTransport:
    """Just enough of the API, in process, for the blocking client."""
    job = {
        "id": "j1",
        "kind": "demo",
        "state": "queued",
        "progress": 0.0,
        "seq": 1,
        "owner": "alice",
        "params": {"steps": 1},
        "created_at": "2030-01-01T00:00:00Z",
        "updated_at": "2030-01-01T00:00:00Z",
    }
    done = {**job, "state": "succeeded", "progress": 100.0, "seq": 3, "result": {"steps": 1}}

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        route = (request.method, request.url.path)
        if route == ("POST", "/api/jobs"):
            return httpx.Response(
                201, json={**job, "params": json.loads(request.content)["params"]}
            )
        if route == ("GET", "/api/jobs"):
            return httpx.Response(200, json={"jobs": [done], "next_cursor": None})
        if route == ("GET", "/api/jobs/j1"):
            return httpx.Response(200, json=done)
        if route == ("GET", "/api/jobs/j1/events"):
            body = (
                f"id: e-1\nevent: snapshot\ndata: {json.dumps(job)}\n\n"
                f"id: e-3\nevent: succeeded\ndata: {json.dumps(done)}\n\n"
            )
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(404, json={"error": "not_found", "message": "no such thing"})

    return httpx.MockTransport(handle)


def test_sync_client_through_an_injected_transport() -> None:
    seen: list[httpx.Request] = []
    with Client("http://jobcast", token="tok", transport=fake_api(seen)) as client:
        job = client.submit("demo", {"steps": 1})
        assert (job.id, job.state, job.params) == ("j1", JobState.QUEUED, {"steps": 1})
        assert [item.type for item in events_of(list(client.watch("j1")))] == [
            "snapshot",
            "succeeded",
        ]
        assert client.wait("j1", timeout=5).result == {"steps": 1}
        assert [listed.id for listed in client.list(state="succeeded").jobs] == ["j1"]
        with pytest.raises(NotFoundError) as missing:
            client.get("nope")
        assert missing.value.message == "no such thing"
    assert all(request.headers["authorization"] == "Bearer tok" for request in seen)
    assert seen[3].url.params.get_list("state") == ["succeeded"]


def test_a_malformed_url_or_token_is_refused_before_anything_is_sent() -> None:
    for url in ("http://127.0.0.1:abc", "localhost:8000", "ftp://example.com", "http://h:99999"):
        with pytest.raises(ValueError, match="URL"):
            Client(url)
    for token in ("tökén", "abc\ndef", "two words"):
        with pytest.raises(ValueError, match="printable ASCII"):
            Client("http://127.0.0.1:8000", token=token)
    seen: list[httpx.Request] = []
    with (
        Client("http://jobcast", token=lambda: "tök", transport=fake_api(seen)) as client,
        pytest.raises(ValueError, match="printable ASCII"),
    ):
        client.list()  # a token function is asked at each request
    assert seen == []


def test_sync_submit_options_and_rerun(server: LiveServer, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    with Client(server.url, token=server.token("alice")) as client:
        later = client.submit("demo", DEMO, delay=60, priority=9, max_attempts=2)
        assert later.state is JobState.QUEUED and later.scheduled_for is not None
        assert (later.priority, later.max_attempts) == (9, 2)
        at = datetime.now(UTC) + timedelta(minutes=5)
        scheduled = client.submit("demo", DEMO, run_at=at)
        assert scheduled.scheduled_for == at.isoformat().replace("+00:00", "Z")
        first = client.submit("demo", DEMO, idempotency_key="client-1")
        assert client.submit("demo", DEMO, idempotency_key="client-1").id == first.id
        with pytest.raises(ConflictError):
            client.submit("demo", {"steps": 9}, idempotency_key="client-1")
        upload = tmp_path / "notes.txt"
        upload.write_text("a\nb\n")
        keyed = client.submit("ingest", file=upload, idempotency_key="file-1", priority=1)
        assert client.submit("ingest", file=upload, idempotency_key="file-1", priority=1).id == (
            keyed.id
        )
        client.wait(first.id, timeout=5)
        rerun = client.rerun(first.id)
        assert rerun.rerun_of == first.id and rerun.id != first.id
        assert client.wait(rerun.id, timeout=5).result == {"steps": 4}
        with pytest.raises(BadRequest):
            client.submit("demo", DEMO, priority=500)


async def test_async_submit_options_and_rerun(server: LiveServer) -> None:
    async with AsyncClient(server.url, token=server.token("alice")) as client:
        job = await client.submit("demo", DEMO, idempotency_key="a-1", priority=-3)
        assert (await client.submit("demo", DEMO, idempotency_key="a-1", priority=-3)).id == job.id
        await client.wait(job.id, timeout=5)
        rerun = await client.rerun(job.id)
        assert rerun.rerun_of == job.id and rerun.priority == -3
