"""The SSE framing and response: one subscription as a Server-Sent Events stream.

:class:`EventStreamResponse` is both the framing of an SSE stream (``writer.Framing``: its
opening, frames, heartbeat and closing) and the ASGI response that writes it through
:class:`AsgiSink`, on any server. Under ``jobcast serve`` the connection itself takes an open
stream over (``serving/native.py``) and the same writer writes the same framing into it.

Decisions (cited as E1..E6):

E1. As ASGI, the response's own coroutine pumps ``send``; a second, tiny task waits on
    ``receive()`` only to learn that the client went away, so a vanished client is
    unsubscribed at once instead of at the next write. No other per-connection task, timer or
    queue exists.
E2. Everything pending is written as one chunk per wake-up (writer.C2), and a stuck write is
    abandoned after ``send_timeout`` (the hub's ticker cancels it, hub.H6, writer.C3): a
    client that stopped reading cannot hold a writer forever.
E3. The stream starts with ``retry:``, then (when resuming) the replay or a ``reset`` frame
    whose id is the head the client may resume from, then live events. A stream that resumes
    nothing carries the head as an ``id:`` in its first frame, which sets a browser's
    ``lastEventId`` without an event: cut before its first event, it resumes from there
    rather than from nothing (and nothing published meanwhile is lost). A stream in an
    application's own format (a prelude, or E5's frames or heartbeats) keeps the wire that
    application defined.
E4. How a stream ends says what to do next: evicted or time-limited streams get a ``retry``
    hint, draining streams a randomised one, an expired credential an ``event: reauth``.
E5. An application may write events and heartbeats in its own format (``event_frame``,
    ``heartbeat``) to keep the wire its front end already parses. The default path writes each
    event's shared, encoded-once frame; a custom ``event_frame`` runs once per event and
    subscriber, so it should be cheap (formatting bytes, no I/O).
E6. The opening is written once: the replay and the prelude (a job's snapshot) are let go of
    as soon as their bytes are made, rather than held for the stream's whole life.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from jobcast.brokers.base import Replay
from jobcast.events import Event
from jobcast.server.streams.pump import Guarded, PumpedSink
from jobcast.server.streams.writer import StreamWriter
from jobcast.subscription import CloseReason, Subscription
from jobcast.wire import HEARTBEAT, ServerSentEvent, opening_frame, retry_frame

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def reset_frame(replay: Replay, last_event_id: str) -> bytes:
    data = orjson.dumps({"reason": replay.gap, "last_event_id": last_event_id}).decode()
    return ServerSentEvent(data=data, event="reset", id=str(replay.head)).encode()


class EventStreamResponse(Response):
    """An SSE stream of one subscription: its framing (``writer.Framing``) and, as ASGI, its
    response."""

    media_type = "text/event-stream"

    def __init__(
        self,
        subscription: Subscription,
        *,
        replay: Replay | None,
        last_event_id: str | None,
        retry_ms: int,
        on_close: Callable[[Subscription], None],
        closing_frame: Callable[[CloseReason], bytes],
        prelude: bytes = b"",
        final: Callable[[Event], bool] | None = None,
        on_write: Callable[[float], None] | None = None,
        event_frame: Callable[[Event], bytes] | None = None,
        heartbeat: Callable[[], bytes] | None = None,
    ) -> None:
        # Not Response.__init__: it would render an empty body and add a Content-Length.
        self.status_code = 200
        self.background = None
        self.body = b""
        #: The response headers; an app (or the request-id layer) may add its own.
        self.raw_headers = list(SSE_HEADERS)
        self.subscription = subscription
        self.replay = replay
        self.last_event_id = last_event_id
        self.retry_ms = retry_ms
        self.on_close = on_close
        self.closing_frame = closing_frame
        #: Frames sent right after ``retry:``, before any replay (a job's snapshot, say).
        self.prelude = prelude
        #: The stream ends after the first event for which this is true (a job's terminal event).
        self.final = final
        #: Told the commit time of the first event of each written batch (latency metric).
        self.on_write = on_write
        #: The bytes written for an event (b"": skip it); default: its shared frame (E5).
        self.event_frame = event_frame
        #: The bytes written as a heartbeat; default: the ``: ping`` comment (E5).
        self.heartbeat_frame = heartbeat

    def writer(self, sink: AsgiSink | Any) -> StreamWriter[Event, bytes]:
        """The writer of this stream into ``sink`` (an ASGI ``send``, or a connection's own)."""
        return StreamWriter(
            self.subscription, self, sink, on_close=self.on_close, on_write=self.on_write
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sink = AsgiSink(send, self.subscription)
        watcher = DisconnectWatch(receive, self.subscription)  # E1
        try:
            start: Message = {
                "type": "http.response.start",
                "status": 200,
                "headers": self.raw_headers,
            }
            try:
                await send(start)
            except OSError:  # the client vanished before its stream began
                self.subscription.close(CloseReason.CLIENT)
                self.on_close(self.subscription)
                return
            await sink.run(self.writer(sink))
        finally:
            watcher.cancel()

    # -- the framing (writer.Framing) --------------------------------------------------------

    def opening(self) -> tuple[bytes, bool]:
        """The first bytes (E3), and whether the stream is already finished with them."""
        replay, finished = self.replay, False
        # E3, on jobcast's own wire; an application's (a prelude, E5) stays as it defined it
        own_format = self.event_frame is None and self.heartbeat_frame is None and not self.prelude
        opened_at = self.subscription.opened_at if replay is None and own_format else None
        if opened_at is None:
            first = retry_frame(self.retry_ms)
        else:  # E3
            first = opening_frame(self.retry_ms, str(opened_at))
        parts = [first, self.prelude]
        if replay is not None:
            if replay.gap is not None:
                parts.append(reset_frame(replay, self.last_event_id or ""))
            else:
                events = replay.events
                for index, event in enumerate(events):
                    if self.final is not None and self.final(event):
                        events, finished = events[: index + 1], True
                        break
                parts.append(self.frames(events))
        self.replay, self.prelude = None, b""  # E6
        return b"".join(parts), finished

    def frames(self, events: list[Event]) -> bytes:
        """The bytes of ``events`` (E5)."""
        if self.event_frame is None:
            return b"".join([event.sse_frame for event in events])
        return b"".join([self.event_frame(event) for event in events])

    def heartbeat(self) -> bytes:
        return self.heartbeat_frame() if self.heartbeat_frame is not None else HEARTBEAT

    def closing(self, reason: CloseReason) -> bytes:
        return self.closing_frame(reason)  # E4


class AsgiSink(PumpedSink[bytes]):
    """An ASGI ``send`` as a stream's sink, pumped by the response's own coroutine (E1)."""

    def __init__(self, send: Send, subscription: Guarded) -> None:
        super().__init__(subscription)
        self._send_message = send

    async def send(self, chunk: bytes) -> None:
        await self._send_message({"type": "http.response.body", "body": chunk, "more_body": True})

    async def finish(self, closing: bytes | None, reason: CloseReason | None) -> None:
        if closing:
            await self.send(closing)
        await self._send_message({"type": "http.response.body", "body": b"", "more_body": False})


class Closable(Protocol):
    """What a client's leaving closes: a subscription, or any other source of a stream."""

    def close(self, reason: CloseReason) -> None: ...


class DisconnectWatch:
    """Closes a subscription (``CLIENT``) once ``receive()`` says the client went away (E1).

    A task per ``receive()`` and a done callback, no coroutine of its own: an idle stream
    holds one small object here instead of a frame, a closure and a context manager.
    """

    __slots__ = ("_receive", "_subscription", "_task")

    def __init__(self, receive: Receive, subscription: Closable) -> None:
        self._receive = receive
        self._subscription = subscription
        self._task = self._arm()

    def _arm(self) -> asyncio.Future[Message]:
        task = asyncio.ensure_future(self._receive())
        task.add_done_callback(self._received)
        return task

    def _received(self, task: asyncio.Future[Message]) -> None:
        if (
            not task.cancelled()
            and task.exception() is None
            and task.result()["type"] != "http.disconnect"  # the request body: read on
        ):
            self._task = self._arm()
            return
        self._subscription.close(CloseReason.CLIENT)

    def cancel(self) -> None:
        self._task.cancel()
