"""Test support: a real uvicorn server in a background thread, and an SSE reader."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI

from jobcast.config import Settings
from jobcast.server.app import Jobcast
from jobcast.server.serving.entrance import FastPaths
from jobcast.server.serving.instant_writes import InstantWrites
from jobcast.server.serving.native import StreamProtocol
from jobcast.wire import ServerSentEvent, SSEDecoder

SECRET = "test-secret-that-is-long-enough-for-hs256"


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"jwt_secret": SECRET}
    values.update(overrides)
    return Settings(_env_file=None, **values)


@dataclass
class LiveServer:
    """A jobcast app served by a real uvicorn on 127.0.0.1, in its own thread and loop.

    With ``native_streams`` (the default, as ``jobcast serve`` runs) open streams are carried
    by the connection (``server/serving/native.py``); without, by their ASGI task, as on any
    other server. A ``standalone`` app's connections answer plain publishes too (native.N5)."""

    app: FastAPI
    host: str = "127.0.0.1"
    port: int = 0
    native_streams: bool = True
    #: ``app`` is ``create_app``'s, served as ``jobcast serve`` serves it (with native streams).
    standalone: bool = False
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    @property
    def jc(self) -> Jobcast:
        jc: Jobcast = self.app.state.jobcast
        return jc

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LiveServer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        jc = getattr(self.app.state, "jobcast", None)
        http: Any = "httptools"
        if self.native_streams:  # as ``jobcast serve`` configures it
            http = StreamProtocol
            if jc is not None:
                if self.standalone:  # plain publishes answered by the connection (native.N5)
                    http = http.answering(InstantWrites(FastPaths(self.app, jc.runtime)))
                http = http.configured(
                    jc.settings.header_timeout_seconds, jc.metrics.count_request_timeout
                )
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", http=http)
        server = self._server = uvicorn.Server(config)
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_until_complete(server.serve(sockets=[sock]))
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        for _ in range(500):
            if server.started:
                return self
            if not self._thread.is_alive():
                raise RuntimeError("server failed to start")
            threading.Event().wait(0.01)
        raise RuntimeError("server did not start within 5 s")

    def call(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the server's event loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    def run(self, coroutine: Any) -> Any:
        """Run a coroutine on the server's loop; returns a concurrent future."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        if self._server.started:
            self.call(self.jc.hub.drain)  # end streams, as a SIGTERM would
        self._server.should_exit = True
        self._thread.join(15)
        assert not self._thread.is_alive(), "server did not stop within 15 s"
        self._server = None

    def token(self, sub: str = "alice", role: str = "user", **kwargs: Any) -> str:
        return self.jc.tokens.mint(sub, role=role, **kwargs)

    def auth(self, sub: str = "alice", role: str = "user", **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, role, **kwargs)}"}


T = TypeVar("T")


async def closed(*writers: asyncio.StreamWriter) -> None:
    """Close raw connections and wait until they are: a transport whose close is still pending
    when the test's loop ends leaks its socket, which pytest reports later, against whichever
    test is running when the collector finds it."""
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(OSError):  # reset by the server meanwhile
            await writer.wait_closed()


async def eventually(
    check: Callable[[], T | Awaitable[T]], timeout: float = 5.0, interval: float = 0.01
) -> T:
    """Poll ``check`` (a function or coroutine function) until it returns something truthy, and
    return that; fail after ``timeout``. For conditions that have no event to await: state
    seen from outside the server or another process. The one polling loop of the tests."""
    async with asyncio.timeout(timeout):
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            await asyncio.sleep(interval)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition of the server's state (``eventually`` for a plain predicate)."""
    await eventually(predicate, timeout)


class EventStream:
    """Reads an SSE response event by event; every read has a timeout."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        params: Any = None,
        headers: dict[str, str] | None = None,
        comments: bool = False,
    ) -> None:
        self._request = client.stream("GET", url, params=params, headers=headers)
        self.decoder = SSEDecoder(keep_comments=comments)
        self._ready: list[ServerSentEvent] = []
        self.response: httpx.Response | None = None
        self._chunks: AsyncIterator[str] | None = None
        self.ended = False

    async def __aenter__(self) -> EventStream:
        self.response = await self._request.__aenter__()
        self._chunks = self.response.aiter_text()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._request.__aexit__(*exc)

    async def next(self, timeout: float = 5.0) -> ServerSentEvent:
        async with asyncio.timeout(timeout):
            while not self._ready:
                assert self._chunks is not None
                try:
                    chunk = await anext(self._chunks)
                except StopAsyncIteration:
                    self.ended = True
                    raise EOFError("the stream ended") from None
                self._ready.extend(self.decoder.feed(chunk))
            return self._ready.pop(0)

    async def take(self, count: int, timeout: float = 5.0) -> list[ServerSentEvent]:
        async with asyncio.timeout(timeout):
            return [await self.next(timeout) for _ in range(count)]

    async def until_end(self, timeout: float = 5.0) -> list[ServerSentEvent]:
        """Every remaining event until the server ends the stream."""
        events = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    events.append(await self.next(timeout))
                except EOFError:
                    return events
