"""Client streams against real servers: resume across a restart, reset, reauth, polling."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from jobcast.client import (
    AsyncClient,
    AuthError,
    Client,
    ConnectionFailed,
    Event,
    JobState,
    ProtocolError,
    Reauth,
    ReconnectPolicy,
    Reset,
    StreamItem,
    WaitTimeout,
)
from jobcast.server.app import create_app
from tests.support import LiveServer, make_settings

T = TypeVar("T")
FAST = ReconnectPolicy(initial_delay=0.05, max_delay=0.5, read_timeout=5)


def take(items: Iterator[T], count: int, timeout: float = 10.0) -> list[T]:
    """The next ``count`` items of a blocking iterator, or a failure after ``timeout``."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: [next(items) for _ in range(count)]).result(timeout)


def start(data_dir: Path, port: int = 0) -> LiveServer:
    settings = make_settings(data_dir=data_dir, heartbeat_interval=0.2)
    return LiveServer(create_app(settings), port=port).start()


def test_subscribe_resumes_across_a_restart_without_loss_or_duplicates(tmp_path: Path) -> None:
    first = start(tmp_path)
    second: LiveServer | None = None
    token = first.token("svc", "service")
    client = Client(first.url, token=token, reconnect=FAST)
    try:
        seed = client.publish("videos/9", "status", {"n": 0})
        stream = client.subscribe("videos/9", last_event_id=seed)
        ids = [client.publish("videos/9", "status", {"n": n}) for n in (1, 2, 3)]
        got = take(stream, 3)
        first.stop()  # drains: the stream ends with a retry hint, then the port refuses
        second = start(tmp_path, first.port)
        ids += [client.publish("videos/9", "status", {"n": n}) for n in (4, 5, 6)]
        got += take(stream, 3)
        ids.append(client.publish("videos/9", "status", {"n": 7}))
        got += take(stream, 1)
        stream.close()
    finally:
        client.close()
        first.stop()
        if second is not None:
            second.stop()
    events = [item for item in got if isinstance(item, Event)]
    assert [event.id for event in events] == ids
    assert [event.data["n"] for event in events] == [1, 2, 3, 4, 5, 6, 7]


async def test_watch_resumes_across_a_restart(tmp_path: Path) -> None:
    first = start(tmp_path)
    second: LiveServer | None = None
    items: list[StreamItem] = []
    try:
        async with AsyncClient(first.url, token=first.token(), reconnect=FAST) as client:
            job = await client.submit("demo", {"steps": 8, "delay": 0.15})
            async with asyncio.timeout(30):
                stream = client.watch(job.id)
                async for item in stream:
                    items.append(item)
                    if isinstance(item, Event) and item.type == "progress" and second is None:
                        await asyncio.to_thread(first.stop)
                        second = await asyncio.to_thread(start, tmp_path, first.port)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    events = [item for item in items if isinstance(item, Event)]
    assert events[-1].type == "succeeded"
    assert sum(event.terminal for event in events) == 1
    ids = [event.id for event in events if event.id and event.type != "snapshot"]
    assert len(ids) == len(set(ids))


def test_reset_is_surfaced(server: LiveServer) -> None:
    with Client(server.url, token=server.token("svc", "service"), reconnect=FAST) as client:
        client.publish("videos/3", "status", {"n": 0})
        stream = client.subscribe(["videos/3"], last_event_id="another-history-5")
        (reset,) = take(stream, 1)
        assert isinstance(reset, Reset)
        assert reset.reason == "history_lost"
        assert reset.last_event_id == "another-history-5"
        published = client.publish("videos/3", "status", {"n": 1})
        (event,) = take(stream, 1)
        stream.close()
    assert isinstance(event, Event)
    assert event.id == published


async def test_reauth_is_surfaced_and_a_fresh_token_resumes(server: LiveServer) -> None:
    tokens = iter([server.token("alice", ttl=1.0)])
    fresh = server.token("alice", ttl=600)
    publisher = server.token("svc", "service")

    async with (
        AsyncClient(server.url, token=lambda: next(tokens, fresh), reconnect=FAST) as client,
        AsyncClient(server.url, token=publisher) as service,
    ):
        seed = await service.publish("public/1", "status", {"n": 0})
        stream = client.subscribe("public/1", last_event_id=seed)
        async with asyncio.timeout(10):
            assert isinstance(await anext(stream), Reauth)
            published = await service.publish("public/1", "status", {"n": 1})
            event = await anext(stream)
        await stream.aclose()
    assert isinstance(event, Event)
    assert event.id == published


# -- polling when streaming is impossible ----------------------------------------------------


class Proxy(LiveServer):
    """A proxy that forwards everything but job streams, which it buffers or breaks."""

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(15)
            self._server = None


def buffering_proxy(upstream: str, mode: str) -> Starlette:
    async def until_disconnect(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def job_events(request: Request) -> Response:
        if mode == "no-headers":  # holds the whole response
            await until_disconnect(request)
            return Response(status_code=504)
        if mode == "empty":  # the stream ends at once, every time
            return Response(b"", media_type="text/event-stream")

        async def body() -> Any:  # headers go out, the body is held back
            await until_disconnect(request)
            yield b""

        return StreamingResponse(body(), media_type="text/event-stream")

    async def forward(request: Request) -> Response:
        async with httpx.AsyncClient(base_url=upstream) as http:
            answer = await http.request(
                request.method,
                request.url.path,
                params=request.query_params,
                headers={"authorization": request.headers.get("authorization", "")},
                content=await request.body(),
            )
        return Response(answer.content, answer.status_code, media_type="application/json")

    methods = ["GET", "POST", "DELETE"]
    return Starlette(
        routes=[
            Route("/api/jobs/{job_id}/events", job_events),
            Route("/{path:path}", forward, methods=methods),
        ]
    )


@pytest.fixture(params=["no-headers", "no-body", "empty"])
def proxy(request: pytest.FixtureRequest, server: LiveServer) -> Iterator[Proxy]:
    running = Proxy(buffering_proxy(server.url, request.param)).start()  # type: ignore[arg-type]
    yield running
    running.stop()


def reauthing_server() -> Starlette:
    """Every stream opens, then ends with ``reauth``: an expired token the server still takes."""

    async def events(request: Request) -> Response:
        request.app.state.streams += 1
        body = 'event: reauth\ndata: {"reason":"credential_expired"}\n\n'
        return Response(body, media_type="text/event-stream")

    app = Starlette(routes=[Route("/api/events", events)])
    app.state.streams = 0
    return app


@pytest.fixture
def reauthing() -> Iterator[Proxy]:
    running = Proxy(reauthing_server()).start()  # type: ignore[arg-type]
    yield running
    running.stop()


def test_sync_reauth_without_a_new_token_backs_off_then_fails(reauthing: Proxy) -> None:
    items: list[StreamItem] = []

    def consume() -> None:
        with Client(reauthing.url, token="expired", reconnect=FAST) as client:
            items.extend(client.subscribe("videos/1"))

    with ThreadPoolExecutor(1) as pool, pytest.raises(AuthError) as caught:
        pool.submit(consume).result(10)
    assert caught.value.reason == "token_expired"
    assert items == [Reauth("credential_expired")] * 2
    assert reauthing.app.state.streams == 2


async def test_async_reauth_with_a_new_token_resumes_at_once(reauthing: Proxy) -> None:
    tokens = iter(["a", "b", "c"])
    async with AsyncClient(reauthing.url, token="a", reconnect=FAST) as client:
        seen = 0
        async with asyncio.timeout(10):
            async for item in client.subscribe("videos/1"):
                assert isinstance(item, Reauth)
                seen += 1
                if seen == 3:
                    break
                client.token = next(tokens)  # renewed on every notice: never gives up
    assert reauthing.app.state.streams == 3


async def test_async_reauth_without_a_new_token_fails(reauthing: Proxy) -> None:
    async with AsyncClient(reauthing.url, token="expired", reconnect=FAST) as client:
        items = client.subscribe("videos/1")
        async with asyncio.timeout(10):
            assert [await anext(items), await anext(items)] == [Reauth("credential_expired")] * 2
            with pytest.raises(AuthError):
                await anext(items)
    assert reauthing.app.state.streams == 2


def quiet_server(silence: float) -> Starlette:
    """A stream whose first event comes at once and whose second comes after ``silence``."""

    async def events(request: Request) -> Response:
        request.app.state.streams += 1

        async def body() -> Any:
            yield b"id: e-1\nevent: note\ndata: 1\n\n"
            await asyncio.sleep(silence)  # the quiet spell under test, not a synchronisation
            yield b"id: e-2\nevent: note\ndata: 2\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/api/events", events)])
    app.state.streams = 0
    return app


# The first byte must come within first_byte_timeout, later reads only within read_timeout.
QUIET = ReconnectPolicy(first_byte_timeout=0.3, read_timeout=10, initial_delay=0.05)


@pytest.fixture
def quiet() -> Iterator[Proxy]:
    running = Proxy(quiet_server(silence=1.0)).start()  # type: ignore[arg-type]
    yield running
    running.stop()


def test_sync_stream_may_be_quiet_longer_than_the_first_byte_timeout(quiet: Proxy) -> None:
    # The blocking client relies on httpcore reading the request's read timeout when the body
    # is read, not when it was sent (_sync.py sets it in between): this pins that behaviour.
    with Client(quiet.url, token="t", reconnect=QUIET) as client:
        stream = client.subscribe("notes/1")
        items = take(stream, 2)
        stream.close()
    assert [item.id for item in items if isinstance(item, Event)] == ["e-1", "e-2"]
    assert quiet.app.state.streams == 1  # no read timed out on the way


async def test_async_stream_may_be_quiet_longer_than_the_first_byte_timeout(
    quiet: Proxy,
) -> None:
    async with AsyncClient(quiet.url, token="t", reconnect=QUIET) as client:
        stream = client.subscribe("notes/1")
        async with asyncio.timeout(10):
            items = [await anext(stream), await anext(stream)]
        await stream.aclose()
    assert [item.id for item in items if isinstance(item, Event)] == ["e-1", "e-2"]
    assert quiet.app.state.streams == 1


POLLING = ReconnectPolicy(
    first_byte_timeout=0.5, initial_delay=0.05, max_delay=0.2, poll_interval=0.1
)


def test_sync_watch_falls_back_to_polling(server: LiveServer, proxy: Proxy) -> None:
    with Client(proxy.url, token=server.token(), reconnect=POLLING) as client:
        job = client.submit("demo", {"steps": 3, "delay": 0.1})
        items = take(client.watch(job.id), 1, timeout=15)
        final = client.wait(job.id, timeout=15)
    assert isinstance(items[0], Event) and items[0].polled
    assert final.state is JobState.SUCCEEDED


async def test_async_watch_falls_back_to_polling(server: LiveServer, proxy: Proxy) -> None:
    async with AsyncClient(proxy.url, token=server.token(), reconnect=POLLING) as client:
        job = await client.submit("demo", {"steps": 3, "delay": 0.1})
        async with asyncio.timeout(15):
            events = [item async for item in client.watch(job.id)]
    assert all(isinstance(item, Event) and item.polled for item in events)
    assert isinstance(events[0], Event) and isinstance(events[-1], Event)
    assert events[0].type in ("snapshot", "succeeded")
    assert events[-1].type == "succeeded"


def hanging_poll_server() -> Starlette:
    """Job streams end at once (so watch polls), and every poll hangs until the client leaves."""

    async def events(request: Request) -> Response:
        return Response(b"", media_type="text/event-stream")

    async def job(request: Request) -> Response:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        return Response(status_code=504)

    return Starlette(
        routes=[Route("/api/jobs/{job_id}/events", events), Route("/api/jobs/{job_id}", job)]
    )


@pytest.fixture
def hanging_poll() -> Iterator[Proxy]:
    running = Proxy(hanging_poll_server()).start()  # type: ignore[arg-type]
    yield running
    running.stop()


def test_sync_wait_keeps_its_timeout_while_a_poll_hangs(hanging_poll: Proxy) -> None:
    # The client-wide timeout is 10 s: a poll bounded only by it overran the deadline by that.
    with Client(hanging_poll.url, token="t", reconnect=POLLING) as client:
        started = time.monotonic()
        with pytest.raises(WaitTimeout):
            client.wait("j1", timeout=1.5)
    assert time.monotonic() - started < 4


async def test_async_wait_keeps_its_timeout_while_a_poll_hangs(hanging_poll: Proxy) -> None:
    async with AsyncClient(hanging_poll.url, token="t", reconnect=POLLING) as client:
        started = time.monotonic()
        async with asyncio.timeout(20):
            with pytest.raises(WaitTimeout):
                await client.wait("j1", timeout=1.5)
    assert time.monotonic() - started < 4


# -- a server that is not jobcast ------------------------------------------------------------


def not_jobcast_server() -> Starlette:
    """Answers every request with 200 and a JSON body that is not jobcast's."""

    async def anything(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    methods = ["GET", "POST", "PUT", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", anything, methods=methods)])


@pytest.fixture
def not_jobcast() -> Iterator[Proxy]:
    running = Proxy(not_jobcast_server()).start()  # type: ignore[arg-type]
    yield running
    running.stop()


def test_sync_a_server_that_is_not_jobcast_is_a_protocol_error(not_jobcast: Proxy) -> None:
    with Client(not_jobcast.url, token="t", reconnect=POLLING) as client:
        for call in (
            lambda: client.list(),
            lambda: client.get("j1"),
            lambda: client.submit("demo"),
            lambda: client.cancel("j1"),
            lambda: client.publish("videos/1", "status"),
        ):
            with pytest.raises(ProtocolError):
                call()
        # Streams that deliver no event end in polling (R3), which cannot read the answer.
        with pytest.raises(ProtocolError):
            take(client.watch("j1"), 1)
    first_only = ReconnectPolicy(max_first_attempts=1)
    with (
        Client(not_jobcast.url, token="t", reconnect=first_only) as client,
        pytest.raises(ProtocolError, match="not an event stream"),
    ):
        take(client.subscribe("videos/1"), 1)


async def test_async_watch_of_a_server_that_is_not_jobcast_ends(not_jobcast: Proxy) -> None:
    async with AsyncClient(not_jobcast.url, token="t", reconnect=POLLING) as client:
        async with asyncio.timeout(10):
            with pytest.raises(ProtocolError):
                await client.wait("j1")


@pytest.fixture
def silent() -> Iterator[str]:
    """A server that accepts connections (the kernel does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# No first byte, so the watch polls (R3); the poll times out too, and nothing ever connected.
NEVER_CONNECTED = ReconnectPolicy(first_byte_timeout=0.3, max_first_attempts=1)


def test_sync_watch_gives_up_on_a_server_that_never_answers_when_asked(silent: str) -> None:
    with (
        Client(silent, token="t", timeout=0.5, reconnect=NEVER_CONNECTED) as client,
        pytest.raises(ConnectionFailed),
    ):
        take(client.watch("j1"), 1)


async def test_async_watch_gives_up_on_a_server_that_never_answers_when_asked(
    silent: str,
) -> None:
    async with AsyncClient(silent, token="t", timeout=0.5, reconnect=NEVER_CONNECTED) as client:
        async with asyncio.timeout(10):
            with pytest.raises(ConnectionFailed):
                await client.wait("j1")


async def test_a_stream_cut_before_its_first_event_resumes_from_its_opening_id(
    tmp_path: Path,
) -> None:
    # Regression: a fresh stream evicted (or cut) before its first event had no id to resume
    # from, so the client came back without one and what was published meanwhile was lost.
    server = LiveServer(create_app(make_settings(data_dir=tmp_path, max_pending_events=5)))
    server.start()
    try:
        received: list[Any] = []
        async with AsyncClient(server.url, token=server.token()) as client:

            async def read() -> None:
                async for item in client.subscribe(["flood"]):
                    if isinstance(item, Event):
                        received.append(item.data)
                        if len(received) == 50:
                            return

            reader = asyncio.create_task(read())
            async with asyncio.timeout(10):
                while server.jc.hub.subscriber_count == 0:  # noqa: ASYNC110 - server state
                    await asyncio.sleep(0.01)
                flood = [{"topic": "flood", "type": "t", "data": n} for n in range(50)]
                async with httpx.AsyncClient() as http:
                    published = await http.post(
                        f"{server.url}/api/events", json=flood, headers=server.auth("w", "service")
                    )
                assert published.status_code == 202
                await reader  # evicted at once (50 > 5 pending), then resumed
        assert received == list(range(50))
        assert server.jc.hub.stats.evicted >= 1
    finally:
        server.stop()
