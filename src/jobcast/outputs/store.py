"""The output streams backend contract, and the wake-ups of live readers.

A backend keeps streams' metadata, bytes and idempotent producers' state, and commits each
append together with the producer state it changes (one transaction: a retry after a crash is
a duplicate, never a second copy). Reads never wait: a live reader (long-poll, SSE) watches
the path in :class:`Wakeups` before it reads, and reads again when woken, so an append that
commits between its read and its wait still wakes it.

W1. A wake-up may carry the change itself (:class:`Change`: the bytes a job's flush appended,
    where, and the stream's new tail): a reader that stood exactly where they start takes them
    without reading the store. Wakeups remember each path's last known tail, so a reader that
    took a change and watches again checks that nothing came in between; anything unknown (a
    change another instance made, a create or a delete) forgets the tail, and the reader
    reads. Every backend hands over the changes its own appends made, HTTP appends and jobs'
    flushes alike.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Protocol

from jobcast.outputs.model import Appended, Producer, ReadResult, StreamInfo


class StreamStore(Protocol):
    """Where streams live: SQLite (embedded), Redis or PostgreSQL; one contract test suite
    runs over each."""

    wakeups: Wakeups
    #: Most bytes one stream may hold (``JOBCAST_MAX_STREAM_BYTES``).
    max_stream_bytes: int

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create(
        self,
        path: str,
        content_type: str,
        *,
        ttl: int | None,
        expires_at: float | None,
        closed: bool,
        body: bytes,
    ) -> tuple[StreamInfo, bool]:
        """Create a stream (``True``), or find the same one (``False``); 409 if it differs."""
        ...

    async def append(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str | None,
        seq: str | None = None,
        producer: Producer | None = None,
        close: bool = False,
    ) -> Appended:
        """Append ``body`` (validated and framed for the stream's type), optionally closing."""
        ...

    def append_now(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str | None,
        seq: str | None = None,
        producer: Producer | None = None,
        close: bool = False,
    ) -> Appended | None:
        """``append`` without waiting, when this store can; ``None``, with nothing done,
        when it cannot (then ``append`` must be used)."""
        ...

    async def append_stored(self, writes: Sequence[tuple[str, bytes, bool]]) -> None:
        """Several already framed appends ``(path, bytes, close)`` in one commit (job output)."""
        ...

    async def head(self, path: str) -> StreamInfo: ...

    async def read(
        self, path: str, incarnation: int | None, position: int | None, *, touch: bool = True
    ) -> ReadResult:
        """The bytes from ``position`` (``None``: the tail) on, whole chunks up to a budget;
        never waits."""
        ...

    async def delete(self, path: str) -> None: ...

    async def listing(self, prefix: str) -> list[StreamInfo]:
        """The live streams whose path starts with ``prefix``."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """Bytes appended to a stream from ``start`` on, and its state after (W1)."""

    incarnation: int
    start: int
    data: bytes
    tail: int
    closed: bool


class Wakeups:
    """Live readers waiting for a path to change (append, close, delete), in this process."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[Change | None]]] = {}
        self._tails: dict[str, tuple[int, int]] = {}
        # Looked up once: a live reader watches again at every change, and each lookup of
        # the running loop costs a system call (getpid).
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, path: str) -> asyncio.Future[Change | None]:
        """A future that completes at the path's next change (with the :class:`Change` when
        known); pass it to :meth:`forget`."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Change | None] = loop.create_future()
        self._waiting.setdefault(path, set()).add(future)
        return future

    def known_tail(self, path: str) -> tuple[int, int] | None:
        """``(incarnation, tail)`` of the path's last known change, if it is known (W1)."""
        return self._tails.get(path)

    def forget(self, path: str, future: asyncio.Future[Change | None]) -> None:
        waiting = self._waiting.get(path)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._waiting[path]
        future.cancel()

    def notify_all(self) -> None:
        """Wake every waiting reader to read (changes may have been missed)."""
        for path in list(self._waiting):
            self.notify(path)

    def notify(self, path: str, change: Change | None = None) -> None:
        if change is None:
            self._tails.pop(path, None)  # unknown: readers must read (W1)
        elif change.closed:
            self._tails.pop(path, None)  # nothing follows: no need to remember it
        else:
            self._tails[path] = (change.incarnation, change.tail)
        for future in self._waiting.pop(path, ()):
            if not future.done():
                future.set_result(change)
