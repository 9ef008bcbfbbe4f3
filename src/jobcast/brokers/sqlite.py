"""The embedded default: in-process fan-out with history in a SQLite file.

Publishing is a group commit: concurrent ``publish`` calls queue their events, one writer task
inserts everything queued in a single transaction, then delivers the batch and answers every
caller. A burst of publishes costs one commit, and an event is delivered (and acknowledged) only
once it is in the file, so a restart never reuses a position a client has seen.

Decisions (cited as B1..B6):

B1. Closing never abandons a batch: ``close`` refuses new publishes, wakes the writer and waits
    for it to commit everything queued; a batch that cannot be committed fails its publishers
    with :class:`Unavailable`. No publisher is ever left waiting.
B2. Retention records what it drops before it drops it: the topic's mark (``trimmed``) is
    written before the ``DELETE``, and a topic folded into the global watermark loses its mark
    only once the watermark covers it. ``replay`` reads the events before the marks, so a
    replay that misses a dropped event always sees its mark and answers ``trimmed``.
B3. A replay reads at most ``max_bytes`` of event data: rows are fetched as they are read and
    the read stops at the budget, answering ``too_far_behind``, so a resume costs bounded memory.
B4. The file has one connection on one thread of its own, and every operation (a batch's
    insert and commit, a replay, a retention pass) is one function run there whole: one hop
    between threads per operation (a commit through aiosqlite took two, whose wake-ups cost
    more CPU than the commit), and operations never interleave, so a retention pass is one
    transaction and a batch is never committed inside another operation's. The file's
    statements are in ``_sqlite_file.py``; this module is the asynchronous side.
B5. A group commit holds about ``COMMIT_EVENTS`` events, whole publishes only (a batch stays
    atomic): what queues beyond goes in the next. Each commit is delivered before the next
    starts, and the subscribers' writers run during the next one's hop, so a burst of
    concurrent batches reaches a subscriber that keeps up in parts, never all at once past
    its buffer (which would evict it as if it were slow).
B6. A lone small publish is committed on the event loop itself: when no commit is queued or
    under way, a publish of at most ``INLINE_EVENTS`` events is written through the loop's
    own connection (``InlineWriter``: a WAL append, tens of microseconds, with no fsync and
    no checkpoint), delivered and answered without waking the writer or the history thread.
    At the rates workers report (one event a request), the two thread hops cost more CPU
    than the commit itself. When the file is busy (a retention pass holds it) or a commit is
    in flight, the publish queues as in B5, so positions are still committed and delivered
    in order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from jobcast._files import create_private
from jobcast._lock import ProcessLock
from jobcast.brokers._sqlite_file import HistoryFile, InlineWriter
from jobcast.brokers.base import Deliver, Gap, Replay, Retention, check_position
from jobcast.errors import Unavailable
from jobcast.events import Event, EventDraft, EventId
from jobcast.topics import TopicPattern

T = TypeVar("T")

#: A commit closes to new publishes once it holds this many events (B5).
COMMIT_EVENTS = 256
#: A publish of at most this many events may be committed on the event loop itself (B6).
INLINE_EVENTS = 32


@dataclass(slots=True)
class _Commit:
    """Events committed (and delivered) together, and the future their publishers await."""

    events: list[Event]
    done: asyncio.Future[None]


class SQLiteBroker:
    shared = False  # one process: nothing to announce, no history lost while running

    def __init__(self, path: Path, retention: Retention, *, trim_interval: float = 5.0) -> None:
        self.path = path
        self.retention = retention
        self.epoch = ""
        self._trim_interval = trim_interval
        self._file: HistoryFile | None = None  # used on self._thread only (B4)
        self._inline: InlineWriter | None = None  # used on the event loop only (B6)
        self._writing = False  # a queued commit is on the history thread (B6)
        self._thread: ThreadPoolExecutor | None = None
        self._deliver: Deliver | None = None
        self._assigned = 0  # newest position handed out
        self._committed = 0  # newest position in the file
        #: Events waiting for the writer, as commits of about COMMIT_EVENTS each (B5).
        self._queue: collections.deque[_Commit] = collections.deque()
        self._wakeup = asyncio.Event()
        self._touched: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._lock = ProcessLock(path.with_name(path.name + ".lock"), "the event history")

    async def start(self, deliver: Deliver, history_lost: Callable[[], None] | None = None) -> None:
        self._deliver = deliver
        self._lock.acquire()  # one process per history: others would never see our events
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="jobcast-history")
        try:
            create_private(self.path)  # events can be private: 0600, as is the secret
            self._file = await self._run(HistoryFile, self.path)
            self._inline = InlineWriter(self.path)
        except sqlite3.Error as exc:
            await self._stop_thread()
            self._lock.release()
            raise Unavailable(f"cannot open the event history at {self.path}: {exc}") from exc
        self.epoch = self._file.epoch
        self._assigned = self._committed = self._file.newest
        self._tasks = [
            asyncio.create_task(self._write_forever()),
            asyncio.create_task(self._trim_forever()),
        ]

    async def close(self) -> None:
        """Commit everything queued, then close (B1)."""
        self._closing = True
        self._wakeup.set()
        try:
            for task in self._tasks[1:]:  # retention: nothing of it is lost when it stops
                task.cancel()
            for task in reversed(self._tasks):
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task
            while self._queue:  # the writer failed or never started
                await self._commit_next()
        finally:
            self._fail_queued("the event history is closed")
            if self._inline is not None:
                self._inline.close()
                self._inline = None
            await self._stop_thread()
            self._lock.release()

    @property
    def head(self) -> EventId:
        return EventId(self.epoch, self._committed)

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` on the history's thread (B4)."""
        assert self._thread is not None
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def _stop_thread(self) -> None:
        """Close the file on its thread, then end the thread."""
        if self._thread is not None:
            if self._file is not None:
                await self._run(self._file.close)
                self._file = None
            self._thread.shutdown()
            self._thread = None

    def _fail_queued(self, reason: str) -> None:
        queued, self._queue = self._queue, collections.deque()
        for commit in queued:
            if not commit.done.done():
                commit.done.set_exception(Unavailable(reason))

    async def publish(self, drafts: Sequence[EventDraft]) -> list[Event]:
        if self._file is None or self._closing:
            raise Unavailable("the event history is closed")
        inline = self.publish_now(drafts)  # B6
        if inline is not None:
            return inline
        events = self._number(drafts)
        queue = self._queue
        if not queue or len(queue[-1].events) >= COMMIT_EVENTS:  # B5: a publish is not split
            queue.append(_Commit([], asyncio.get_running_loop().create_future()))
        done = queue[-1].done
        queue[-1].events.extend(events)
        self._wakeup.set()
        await asyncio.shield(done)
        return events

    def publish_now(self, drafts: Sequence[EventDraft]) -> list[Event] | None:
        """A lone small publish, committed on the loop (B6); ``None`` (nothing done) when a
        commit is queued or under way, the publish is larger, or the file is busy."""
        if self._file is None or self._closing:
            raise Unavailable("the event history is closed")
        if self._queue or self._writing or len(drafts) > INLINE_EVENTS:
            return None
        events = self._number(drafts)
        try:
            if self._commit_inline(events):
                return events
        except Unavailable:
            self._assigned -= len(events)
            raise
        self._assigned -= len(events)  # nothing ran since they were numbered: hand them back
        return None

    def _number(self, drafts: Sequence[EventDraft]) -> list[Event]:
        now = time.time()
        events = []
        for draft in drafts:
            self._assigned += 1
            events.append(
                Event(self.epoch, self._assigned, draft.topic, draft.type, draft.data_json, now)
            )
        return events

    async def _write_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._commit_next()
            if self._closing and not self._queue:
                return  # B1: everything queued before close is committed

    def _commit_inline(self, events: list[Event]) -> bool:
        """Commit ``events`` on the loop (B6); ``False`` when the file is busy."""
        assert self._inline is not None
        rows = [(e.position, e.topic, e.type, e.data_json, e.ts) for e in events]
        try:
            if not self._inline.insert(rows):
                return False
        except sqlite3.Error as exc:
            raise Unavailable(f"could not store events: {exc}") from exc
        self._stored(events)
        return True

    async def _commit_next(self) -> None:
        commit = self._queue.popleft()
        batch, done = commit.events, commit.done
        rows = [(e.position, e.topic, e.type, e.data_json, e.ts) for e in batch]
        self._writing = True
        try:
            if self._file is None:
                raise sqlite3.OperationalError("closed")
            await self._run(self._file.insert, rows)
        except sqlite3.Error as exc:
            if not done.done():
                done.set_exception(Unavailable(f"could not store events: {exc}"))
            return
        except BaseException:  # B1: whatever stops the writer, nobody waits forever
            if not done.done():
                done.set_exception(Unavailable("the event history stopped while storing events"))
            raise
        finally:
            self._writing = False
        self._stored(batch)
        if not done.done():
            done.set_result(None)

    def _stored(self, batch: list[Event]) -> None:
        """``batch`` is in the file: it is the head now, and it goes to subscribers."""
        self._committed = batch[-1].position
        self._touched.update(e.topic for e in batch)
        if self._deliver is not None:
            self._deliver(batch)

    async def replay(
        self,
        patterns: Sequence[TopicPattern],
        after: EventId,
        limit: int,
        max_bytes: int | None = None,
    ) -> Replay:
        if self._file is None:
            raise Unavailable("the event history is closed")
        head = self.head
        gap = check_position(self.epoch, head.position, after)
        if gap is not None:
            return Replay([], head, gap)
        budget = max_bytes if max_bytes is not None else float("inf")
        try:
            rows, over, trimmed = await self._run(
                self._file.read, patterns, after.position, head.position, limit, budget
            )
        except sqlite3.Error as exc:
            raise Unavailable(f"could not read the event history: {exc}") from exc
        if trimmed > after.position:
            return Replay([], head, Gap.TRIMMED)
        if len(rows) > limit or over:
            return Replay([], head, Gap.TOO_FAR_BEHIND)
        events = [Event(self.epoch, r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]
        return Replay(events, head)

    async def trim(self) -> None:
        """Apply retention: keep at most N events per topic, none older than the age limit.

        Every drop is marked before its rows are deleted (B2); the pass is one transaction
        (B4).
        """
        if self._file is None:
            return
        touched, self._touched = self._touched, set()
        keep, cutoff = (
            self.retention.max_events_per_topic,
            time.time() - self.retention.max_age_seconds,
        )
        await self._run(self._file.trim, touched, keep, cutoff)

    async def _trim_forever(self) -> None:
        while True:
            await asyncio.sleep(self._trim_interval)
            try:
                await self.trim()
            except sqlite3.Error:
                continue  # retention is retried on the next tick; publishing is unaffected
