"""A Durable Streams SSE read (``GET /v1/stream/{path}?live=sse``) on the one stream writer.

:class:`StoredSource` follows a stored stream as ``writer.Source`` (its items are reads,
:class:`~jobcast.outputs.model.ReadResult`); :class:`DurableSseResponse` is their framing
(``data`` and ``control`` events) and, as ASGI, the response. Under ``jobcast serve`` the
connection carries it (``serving/native.py``), as it carries an event stream.

Decisions (cited as D1..D5; durable_reads R1-R3 hold as before):

D1. A wake-up that carries the change where the reader stands (outputs/store.W1) becomes an
    item at once, with no task and no store read; anything else starts one read task. The
    wake-ups during that read are kept: once it is in, those it found are dropped and those
    that carry the bytes from where it ended become items; any other (no change, a gap)
    makes it read once more. (Reading again for every wake-up during a read kept a reader
    of a busy stream reading the store for as long as appends came faster than its reads.)
    The path is watched again before any read (R1).
D2. Everything pending when the writer wakes is written as one ``data`` event and one
    ``control`` event (writer.C2): contiguous reads are joined before they are encoded.
D3. Pending bytes are bounded (``MAX_PENDING``): past it, live changes are not kept and the
    reader reads them from the store once the writer has taken what it holds.
D4. One timer per stream, no task: it makes a heartbeat due after ``heartbeat_interval``
    without a write, ends the stream at ``stream_sse_seconds`` (R3), and ends a write stuck
    longer than ``send_timeout`` (as the hub does for subscriptions, hub.H6).
D5. The stream gives its live-read slot back (``outputs/readers.py``), forgets its watch and
    stops its timer exactly once, however it ends, even unstarted.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from jobcast.outputs.model import ReadResult, format_offset, is_json, is_text, json_body
from jobcast.server.streams.sse import AsgiSink, DisconnectWatch
from jobcast.server.streams.writer import StreamWriter
from jobcast.subscription import CloseReason

if TYPE_CHECKING:
    from jobcast.outputs.store import Change, StreamStore

#: Most bytes a stream keeps for a writer that cannot write yet (D3).
MAX_PENDING = 1 << 20
HEARTBEAT = b": ping\n\n"
_LINES = re.compile(r"\r\n|\r|\n")


@dataclasses.dataclass(frozen=True, slots=True)
class Timing:
    heartbeat: float
    lifetime: float
    send_timeout: float


class StoredSource:
    """A stored stream followed from one position: reads, as ``writer.Source`` (D1-D5)."""

    def __init__(
        self,
        store: StreamStore,
        path: str,
        first: ReadResult,
        woken: asyncio.Future[Change | None],
        timing: Timing,
        release: Callable[[], None],
        drained: asyncio.Event,
    ) -> None:
        self._store = store
        self._path = path
        self._timing = timing
        self._release_slot = release
        self._loop = asyncio.get_running_loop()
        self._ends = time.monotonic() + timing.lifetime
        self._last = first
        self._incarnation = first.info.incarnation
        self._position = first.end
        self._pending: list[ReadResult] = [first]
        self._pending_bytes = len(first.data)
        self._stale = False  # D3: changes were let go; read them
        self._held: list[Change | None] = []  # D1: wake-ups during a read
        self._reading: asyncio.Task[None] | None = None
        self._woken: asyncio.Future[Change | None] | None = woken
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._released = False
        self._writer: Any = None
        self.close_reason: CloseReason | None = None
        self.heartbeat_due = False
        self.write_aborted = False
        self.writing_since = 0.0
        self.last_write = time.monotonic()
        # R3: a shutdown ends the stream (one small task, not one per chunk)
        self._drained: asyncio.Future[Any] | None = asyncio.ensure_future(drained.wait())
        self._drained.add_done_callback(self._draining)
        if first.eof:
            self._forget_watch()
        else:
            woken.add_done_callback(self._changed)
            if not first.up_to_date:  # the read budget cut it short: read on at once
                self._read()

    @property
    def content_type(self) -> str:
        return self._last.info.content_type

    # -- writer.Source -----------------------------------------------------------------------

    def attach(self, writer: Any) -> None:
        self._writer = writer
        self._arm_timer()

    def detach(self) -> None:
        self._writer = None
        self.writing_since = 0.0

    def is_attached(self, writer: Any) -> bool:
        return self._writer is writer

    def waiter(self) -> asyncio.Future[None] | None:
        if self._pending or self.heartbeat_due or self.close_reason is not None:
            return None
        waiter = self._waiter = self._loop.create_future()
        return waiter

    def take(self) -> list[ReadResult]:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if self._stale and self._reading is None:
            self._stale = False
            self._read()
        return pending

    def mark_written(self) -> None:
        self.heartbeat_due = False
        self.last_write = time.monotonic()

    def close(self, reason: CloseReason) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self._pending = []
        self._stop()
        self._wake()

    def release(self, _: Any = None) -> None:
        """Let go of everything the stream holds (D5); once."""
        self._stop()
        if not self._released:
            self._released = True
            self._release_slot()

    def _draining(self, drained: asyncio.Future[Any]) -> None:
        if not drained.cancelled():
            self.close(CloseReason.DRAIN)

    # -- following the stream (D1, D3) -------------------------------------------------------

    def _changed(self, woken: asyncio.Future[Change | None]) -> None:
        if woken.cancelled() or self.close_reason is not None:
            return
        change = woken.result()
        self._watch()  # R1: before anything is read
        if self._reading is not None:
            self._held.append(change)  # D1: taken when the read is in
            return
        if self._follows(change):
            assert change is not None
            if not self._push_change(change):
                self._read()
            return
        if self._pending_bytes >= MAX_PENDING:
            self._stale = True  # D3: read once the writer has taken what it holds
            return
        self._read()

    def _follows(self, change: Change | None) -> bool:
        """Whether ``change`` carries the bytes from where the reader stands (D1)."""
        return (
            change is not None
            and not self._stale
            and change.incarnation == self._incarnation
            and change.start == self._position
            and self._pending_bytes + len(change.data) <= MAX_PENDING
        )

    def _push_change(self, change: Change) -> bool:
        """Push what ``change`` carries; whether the reader is then at the known tail."""
        info = dataclasses.replace(self._last.info, tail=change.tail, closed=change.closed)
        known = self._store.wakeups.known_tail(self._path)
        current = change.closed or known == (change.incarnation, change.tail)
        self._push(ReadResult(info, change.start, change.data, change.tail, current))
        return current

    def _take_held(self) -> bool:
        """Apply the wake-ups that came during a read (D1); whether all were known, so that
        nothing is left to read."""
        held, self._held = self._held, []
        for change in held:
            if (
                change is not None
                and change.incarnation == self._incarnation
                and change.tail <= self._position
            ):
                continue  # the read found it already
            if not self._follows(change):
                return False
            assert change is not None
            if not self._push_change(change):
                return False
        return True

    def _read(self) -> None:
        self._reading = self._loop.create_task(self._read_on())

    async def _read_on(self) -> None:
        try:
            while self.close_reason is None:
                self._held = []  # what came before the read is in it
                result = await self._store.read(self._path, self._incarnation, self._position)
                if result.data or result.eof:
                    self._push(result)
                if result.eof:
                    return
                if self._pending_bytes >= MAX_PENDING:
                    self._stale = True  # D3
                    return
                if result.up_to_date and self._take_held():
                    return
        except Exception:  # deleted or expired: end as R3 does; the next request says why
            self.close(CloseReason.TIME_LIMIT)
        finally:
            self._reading = None

    def _push(self, result: ReadResult) -> None:
        self._last = result
        self._incarnation, self._position = result.info.incarnation, result.end
        self._pending.append(result)
        self._pending_bytes += len(result.data)
        if result.eof:
            self._forget_watch()
        self._wake()

    def _watch(self) -> None:
        self._forget_watch()
        woken = self._woken = self._store.wakeups.watch(self._path)
        woken.add_done_callback(self._changed)

    def _forget_watch(self) -> None:
        woken, self._woken = self._woken, None
        if woken is not None:
            self._store.wakeups.forget(self._path, woken)

    # -- the timer (D4) ------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        if self.close_reason is None:
            delay = min(self._timing.heartbeat, max(0.0, self._ends - time.monotonic()))
            self._timer = self._loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = time.monotonic()
        if self.writing_since and now - self.writing_since >= self._timing.send_timeout:
            self.write_aborted = True
            self.close(CloseReason.STUCK)
            if self._writer is not None:
                self._writer.cancel()
            return
        if now >= self._ends:
            self.close(CloseReason.TIME_LIMIT)
            return
        if now - self.last_write >= self._timing.heartbeat * 0.99:
            self.heartbeat_due = True
            self._wake()
        self._arm_timer()

    def _stop(self) -> None:
        self._forget_watch()
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reading is not None:
            self._reading.cancel()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class DurableSseResponse(Response):
    """The framing of a Durable Streams SSE read (``writer.Framing``) and its ASGI response."""

    media_type = "text/event-stream"

    def __init__(
        self,
        source: StoredSource,
        headers: dict[str, str],
        content_type: str,
        client_cursor: str | None,
        cursor: Callable[[str | None], str],
    ) -> None:
        # Not Response.__init__: it would render an empty body and add a Content-Length.
        self.status_code = 200
        self.background = None
        self.body = b""
        self.raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.source = source
        self._json = is_json(content_type)
        self._text = is_text(content_type)
        self._client_cursor = client_cursor
        self._cursor = cursor
        self.final: Callable[[ReadResult], bool] | None = _eof

    def writer(self, sink: Any) -> StreamWriter[ReadResult, bytes]:
        """The writer of this stream into ``sink`` (an ASGI ``send``, or a connection)."""
        return StreamWriter(self.source, self, sink, on_close=self.source.release)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        source = self.source
        try:
            sink = AsgiSink(send, source)
            watcher = DisconnectWatch(receive, source)
            try:
                start: Message = {"type": "http.response.start", "status": 200}
                start["headers"] = self.raw_headers
                try:
                    await send(start)
                except OSError:  # the client vanished before its stream began
                    return
                await sink.run(self.writer(sink))
            finally:
                watcher.cancel()
        finally:
            source.release()  # D5

    # -- the framing (writer.Framing, D2) ------------------------------------------------------

    def opening(self) -> tuple[bytes, bool]:
        return b"", False

    def frames(self, results: list[ReadResult]) -> bytes:
        if not results:
            return b""
        first, last = results[0], results[-1]
        data = b"".join([result.data for result in results]) if len(results) > 1 else first.data
        parts = []
        if data:
            parts.append(self._data_event(data))
        if data or last.up_to_date or last.eof:
            parts.append(self._control_event(last))
        return b"".join(parts)

    def heartbeat(self) -> bytes:
        return HEARTBEAT

    def closing(self, reason: CloseReason) -> bytes:
        return b""  # every data event came with its control event: the client knows (R3)

    def _data_event(self, data: bytes) -> bytes:
        if self._json:
            lines = [json_body(data).decode()]
        elif self._text:
            lines = _LINES.split(data.decode(errors="replace"))
        else:
            lines = [base64.b64encode(data).decode()]
        return ("event: data\n" + "".join([f"data:{line}\n" for line in lines]) + "\n").encode()

    def _control_event(self, result: ReadResult) -> bytes:
        control: dict[str, Any] = {
            "streamNextOffset": format_offset(result.info.incarnation, result.end)
        }
        if result.eof:
            control["streamClosed"] = True
            control["upToDate"] = True
        else:
            control["streamCursor"] = self._cursor(self._client_cursor)
            if result.up_to_date:
                control["upToDate"] = True
        return b"event: control\ndata:" + orjson.dumps(control) + b"\n\n"


def _eof(result: ReadResult) -> bool:
    return result.eof


def holding(hold: AbstractContextManager[None]) -> Callable[[], None]:
    """The release of a live-read slot already entered (D5)."""

    def release() -> None:
        hold.__exit__(None, None, None)

    return release
