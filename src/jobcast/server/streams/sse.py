"""The SSE response: writes one subscription to one HTTP connection.

As ASGI, on any server. Under ``jobcast serve`` the connection itself takes an open stream
over (``native_streams.py``) and writes the same bytes, from this response's ``opening``,
``next_chunk`` and ``closing_frame``, without a task.

Decisions (cited as E1..E4):

E1. One coroutine per connection writes; a second, tiny task waits on ``receive()`` only to
    learn that the client went away, so a vanished client is unsubscribed at once instead of
    at the next write. No other per-connection task, timer or queue exists.
E2. Everything pending is written as one chunk per wake-up, and a stuck write is abandoned
    after ``send_timeout`` (the hub's ticker cancels it, hub.H6): a client that stopped
    reading cannot hold a writer forever.
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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from jobcast.brokers.base import Replay
from jobcast.events import Event
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
        self.heartbeat = heartbeat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        subscription = self.subscription
        subscription.writer = asyncio.current_task()
        watcher = DisconnectWatch(receive, subscription)  # E1
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            opening, finished = self.opening()
            await self._write(send, opening)
            while not finished:
                waiter = subscription.waiter()
                if waiter is not None:
                    await waiter
                if subscription.close_reason is not None:
                    break
                body, first_ts, finished = self.next_chunk()
                if body:
                    await self._write(send, body)
                    self.written(first_ts)
            reason = subscription.close_reason
            if finished:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif reason is not CloseReason.CLIENT and reason is not None:
                await self._write(send, self.closing_frame(reason))
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client vanished: nothing more can reach it
        except asyncio.CancelledError:
            if not subscription.write_aborted:
                raise
            # E2: the hub ended a write the client stopped reading; this is not a shutdown.
            if (task := asyncio.current_task()) is not None:
                task.uncancel()
        finally:
            subscription.writer = None
            watcher.cancel()
            self.on_close(subscription)

    # -- what is written, shared with the connection-driven writer (native_streams.py) ------

    def opening(self) -> tuple[bytes, bool]:
        """The first bytes (E3), and whether the stream is already finished with them."""
        replay, finished = self.replay, False
        # E3, on jobcast's own wire; an application's (a prelude, E5) stays as it defined it
        own_format = self.event_frame is None and self.heartbeat is None and not self.prelude
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
                events, finished = self.until_final(replay.events)
                parts.append(self.frames(events))
        return b"".join(parts), finished

    def next_chunk(self) -> tuple[bytes, float | None, bool]:
        """What to write on a wake-up (E2): the pending events' frames, or a heartbeat if one is
        due (``b""``: nothing); the first event's commit time; whether the stream is finished."""
        subscription = self.subscription
        events, finished = self.until_final(subscription.take())
        body = self.frames(events)
        if not body and subscription.heartbeat_due:  # else: all replayed duplicates, or skipped
            body = self.heartbeat() if self.heartbeat is not None else HEARTBEAT
        return body, (events[0].ts if events else None), finished

    def written(self, first_ts: float | None) -> None:
        """A chunk from ``next_chunk`` was written (the latency metric, heartbeat timing)."""
        if first_ts is not None and self.on_write is not None:
            self.on_write(first_ts)
        self.subscription.mark_written()

    def frames(self, events: list[Event]) -> bytes:
        """The bytes of ``events`` (E5)."""
        if self.event_frame is None:
            return b"".join([event.sse_frame for event in events])
        return b"".join([self.event_frame(event) for event in events])

    def until_final(self, events: list[Event]) -> tuple[list[Event], bool]:
        """``events`` up to and including the final one, and whether there was one."""
        if self.final is not None:
            for index, event in enumerate(events):
                if self.final(event):
                    return events[: index + 1], True
        return events, False

    async def _write(self, send: Send, body: bytes) -> None:
        message: Message = {"type": "http.response.body", "body": body, "more_body": True}
        subscription = self.subscription
        subscription.writing_since = time.monotonic()  # E2
        await send(message)
        subscription.writing_since = 0.0


class DisconnectWatch:
    """Closes a subscription (``CLIENT``) once ``receive()`` says the client went away (E1).

    A task per ``receive()`` and a done callback, no coroutine of its own: an idle stream
    holds one small object here instead of a frame, a closure and a context manager.
    """

    __slots__ = ("_receive", "_subscription", "_task")

    def __init__(self, receive: Receive, subscription: Subscription) -> None:
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
