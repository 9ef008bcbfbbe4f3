"""The one stream writer: a source's items, framed, written to one sink.

Every stream kind (a topic's SSE stream, a job's SSE stream, a job's WebSocket, ``/ws/events``)
is a :class:`Framing` (what bytes or messages an item, a heartbeat, the opening and the closing
become) plus a :class:`Sink` (where they go: an ASGI ``send``, jobcast's uvicorn connection, a
WebSocket). This module is the loop between them, written once. Its :class:`Source` is a
subscription (``subscription.py``), or what merges several with control messages
(``socket_feed.py``).

Decisions (cited as C1..C6):

C1. Callbacks, not a task. The subscription's waiter future calls the writer back when there is
    something to do, so an idle stream keeps no coroutine frame of its own. A sink either takes
    a chunk at once (``write`` returns true) or holds it and calls :meth:`StreamWriter.resumed`
    when it can take the next: a connection that writes into its transport takes chunks at once
    until flow control pauses it; an ASGI ``send`` or a WebSocket is driven by one small pump
    coroutine of the sink's own.
C2. One chunk per wake-up: everything pending is framed and written together (subscription S1),
    or a heartbeat when one is due and nothing else was written (subscription S4). Only a
    write restarts the quiet clock; a heartbeat the framing leaves out (an application's own
    protocol, kept alive by the carrier's pings) still counts as given.
C3. While a sink holds a chunk the subscription is marked as writing; the hub's ticker ends a
    write that does not complete within ``send_timeout`` (hub.H6) through :meth:`cancel`,
    which aborts the sink.
C4. The end says what to do next: after the final event (a job's terminal event) the sink ends
    normally; a subscription closed for any reason but the client's leaving gets the framing's
    closing chunk first (a ``retry`` hint, ``reauth``, an error message: sse.E4); a client that
    left gets nothing. The writer then hands the subscription back (``on_close``), once.
C5. The sink reports the client's leaving (:meth:`lost`): a closed connection, a failed send.
C6. The writer is itself the callback its source's waiter calls (``__call__``): a bound method
    would be one more object for every idle stream, and one more allocation per wake-up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sized
from typing import Any, Generic, Protocol, TypeVar

from jobcast.events import Event
from jobcast.subscription import CloseReason

Chunk = TypeVar("Chunk", bound=Sized)
Item = TypeVar("Item")
ChunkT_co = TypeVar("ChunkT_co", bound=Sized, covariant=True)
ChunkT_contra = TypeVar("ChunkT_contra", bound=Sized, contravariant=True)


class Source(Protocol[Item]):
    """What a writer follows: a subscription, or a socket's subscriptions and replies."""

    @property
    def close_reason(self) -> CloseReason | None: ...

    @property
    def heartbeat_due(self) -> bool: ...

    @property
    def write_aborted(self) -> bool:
        """Whether the hub ended a write of it (hub.H6)."""
        ...

    #: When (monotonic) the writer's current write began, 0 when it is not writing (C3).
    writing_since: float

    def attach(self, writer: Any) -> None: ...

    def detach(self) -> None: ...

    def is_attached(self, writer: Any) -> bool: ...

    def waiter(self) -> asyncio.Future[None] | None:
        """A future done once there is something to do; ``None`` when there is already."""
        ...

    def take(self) -> list[Item]: ...

    def mark_written(self) -> None: ...

    def close(self, reason: CloseReason) -> None: ...


class Framing(Protocol[Item, ChunkT_co]):
    """What a stream kind writes; a chunk is ``bytes`` (SSE) or a list of messages."""

    def opening(self) -> tuple[ChunkT_co, bool]:
        """The first chunk, and whether the stream is already finished with it."""
        ...

    def frames(self, items: list[Item]) -> ChunkT_co:
        """The chunk for ``items`` (may be empty: items a framing skips)."""
        ...

    def heartbeat(self) -> ChunkT_co: ...

    def closing(self, reason: CloseReason) -> ChunkT_co:
        """What a stream closed for ``reason`` ends with (C4)."""
        ...

    #: Whether the stream ends after an item (a job's terminal event); ``None`` when no item
    #: ends it, so a stream of topics pays nothing per item for it.
    final: Callable[[Item], bool] | None


class Sink(Protocol[ChunkT_contra]):
    """Where a stream's chunks go: one carrier (C1)."""

    def write(self, chunk: ChunkT_contra) -> bool:
        """Write ``chunk``; false when the writer must wait for :meth:`StreamWriter.resumed`."""
        ...

    def end(
        self, closing: ChunkT_contra | None, reason: CloseReason | None, done: Callable[[], None]
    ) -> None:
        """The last write (C4): ``reason`` is ``None`` when the stream finished by itself.
        Call ``done`` once that write is complete (or abandoned): until then a stuck write is
        still the hub's to end (C3)."""
        ...

    def abort(self) -> None:
        """Drop the connection: a write is stuck (C3)."""
        ...


class StreamWriter(Generic[Item, Chunk]):
    """Writes one source to one sink until either ends (C1-C5)."""

    __slots__ = ("_on_close", "_on_write", "blocked", "ended", "framing", "sink", "source")

    def __init__(
        self,
        source: Source[Item],
        framing: Framing[Item, Chunk],
        sink: Sink[Chunk],
        *,
        on_close: Callable[[Any], None],
        on_write: Callable[[float], None] | None = None,
    ) -> None:
        self.source = source
        self.framing = framing
        self.sink = sink
        #: Told when the stream is over, with its source (the hub's ``unsubscribe``, say).
        self._on_close = on_close
        #: Told the commit time of the first event of each written batch (latency metric).
        self._on_write = on_write
        self.blocked = False  # the sink holds a chunk (C1)
        self.ended = False

    @property
    def subscription(self) -> Source[Item]:
        """The source (a subscription, for most streams)."""
        return self.source

    def start(self) -> None:
        """Write the opening, then follow the source."""
        self.source.attach(self)
        opening, finished = self.framing.opening()
        self._write(opening)
        if finished:
            self._end(finished=True)
            return
        self._proceed()

    def _proceed(self, _: Any = None) -> None:
        """Write what is pending, then wait for more, for the sink, or for the end (C2)."""
        source, framing = self.source, self.framing
        while not self.ended and not self.blocked:
            if source.close_reason is not None:
                self._end(finished=False)
                return
            waiter = source.waiter()
            if waiter is not None:
                waiter.add_done_callback(self)  # C6
                return
            items = source.take()
            finished = False
            final = framing.final
            if final is not None:
                for index, item in enumerate(items):
                    if final(item):
                        items, finished = items[: index + 1], True
                        break
            body = framing.frames(items)
            if body:
                self._write(body)
                if items and self._on_write is not None and isinstance(items[0], Event):
                    self._on_write(items[0].ts)
                source.mark_written()
            elif source.heartbeat_due:  # else: replayed duplicates, or skipped
                self._write(framing.heartbeat())
                source.mark_written()
            if finished:
                self._end(finished=True)
                return

    __call__ = _proceed  # the source's waiter calls the writer back (C6)

    def _write(self, chunk: Chunk) -> None:
        if not chunk:
            return
        if not self.sink.write(chunk):
            self.blocked = True
            self.source.writing_since = time.monotonic()  # C3

    def resumed(self) -> None:
        """The sink took its chunk: go on (C1)."""
        if self.blocked:
            self.blocked = False
            self.source.writing_since = 0.0
            self._proceed()

    def lost(self) -> None:
        """The client went away (C5)."""
        self.source.close(CloseReason.CLIENT)
        self._end(finished=False)

    def cancel(self) -> None:
        """The hub gave up on a write the client does not read (C3, hub.H6)."""
        self.sink.abort()
        self._end(finished=False)

    def _end(self, *, finished: bool) -> None:
        if self.ended:
            return
        self.ended = True
        source = self.source
        source.writing_since = 0.0
        reason = None if finished else (source.close_reason or CloseReason.CLIENT)
        closing = None
        if reason is not None and reason is not CloseReason.CLIENT:  # C4
            closing = self.framing.closing(reason)
        self.sink.end(closing, reason, self._release)

    def _release(self) -> None:
        """The sink's last write is over: hand the source back, once."""
        source = self.source
        if source.is_attached(self):
            source.detach()
            self._on_close(source)
