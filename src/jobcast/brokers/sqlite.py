"""The embedded default: in-process fan-out with history in a SQLite file.

Publishing is a group commit: concurrent ``publish`` calls queue their events, one writer task
inserts everything queued in a single transaction, then delivers the batch and answers every
caller. A burst of publishes costs one commit, and an event is delivered (and acknowledged) only
once it is in the file, so a restart never reuses a position a client has seen.

Decisions (cited as B1..B4):

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
    transaction and a batch is never committed inside another operation's.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from jobcast._files import create_private
from jobcast._lock import ProcessLock
from jobcast.brokers.base import Deliver, Gap, Replay, Retention, check_position, new_epoch
from jobcast.errors import Unavailable
from jobcast.events import Event, EventDraft, EventId
from jobcast.topics import TopicPattern

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    type TEXT NOT NULL,
    data BLOB NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_topic ON events (topic, position);
CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts);
CREATE TABLE IF NOT EXISTS trimmed (topic TEXT PRIMARY KEY, position INTEGER NOT NULL);
"""


def _topic_filter(patterns: Sequence[TopicPattern], column: str = "topic") -> tuple[str, list[str]]:
    """A WHERE clause (and its parameters) matching any of ``patterns``; prefixes use ranges."""
    clauses: list[str] = []
    params: list[str] = []
    exact = [p.text for p in patterns if p.prefix is None]
    if exact:
        clauses.append(f"{column} IN ({','.join('?' * len(exact))})")
        params.extend(exact)
    for pattern in patterns:
        if pattern.prefix == "":
            return "1", []
        if pattern.prefix is not None:
            # Every topic starting with "a/" sorts in ["a/", "a0"): '0' follows '/'.
            clauses.append(f"({column} >= ? AND {column} < ?)")
            params.extend([pattern.prefix, pattern.prefix[:-1] + "0"])
    return " OR ".join(clauses), params


class SQLiteBroker:
    def __init__(self, path: Path, retention: Retention, *, trim_interval: float = 5.0) -> None:
        self.path = path
        self.retention = retention
        self.epoch = ""
        self._trim_interval = trim_interval
        self._db: sqlite3.Connection | None = None  # used on self._thread only (B4)
        self._thread: ThreadPoolExecutor | None = None
        self._deliver: Deliver | None = None
        self._assigned = 0  # newest position handed out
        self._committed = 0  # newest position in the file
        self._expired_through = 0
        self._queue: list[Event] = []
        self._queue_done: asyncio.Future[None] | None = None
        self._wakeup = asyncio.Event()
        self._touched: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._lock = ProcessLock(path.with_name(path.name + ".lock"), "the event history")

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._lock.acquire()  # one process per history: others would never see our events
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="jobcast-history")
        try:
            create_private(self.path)  # events can be private: 0600, as is the secret
            self._assigned = self._committed = await self._run(self._open)
        except sqlite3.Error as exc:
            await self._stop_thread()
            self._lock.release()
            raise Unavailable(f"cannot open the event history at {self.path}: {exc}") from exc
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
            if self._queue:  # the writer failed or never started
                await self._commit_queue()
        finally:
            self._fail_queued("the event history is closed")
            await self._stop_thread()
            self._lock.release()

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` on the history's thread (B4)."""
        assert self._thread is not None
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    def _open(self) -> int:
        """Open (or create) the file; the newest position in it."""
        # The connection is made and used on the history's thread alone (B4).
        self._db = db = sqlite3.connect(self.path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self.epoch = self._meta("epoch") or self._set_meta("epoch", new_epoch())
        self._expired_through = int(self._meta("expired_through") or 0)
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        db.commit()
        return int(row[0]) if row else 0

    async def _stop_thread(self) -> None:
        """Close the connection on its thread, then end the thread."""
        if self._thread is not None:
            await self._run(self._close_connection)
            self._thread.shutdown()
            self._thread = None

    def _close_connection(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _fail_queued(self, reason: str) -> None:
        done, self._queue, self._queue_done = self._queue_done, [], None
        if done is not None and not done.done():
            done.set_exception(Unavailable(reason))

    async def publish(self, drafts: Sequence[EventDraft]) -> list[Event]:
        if self._thread is None or self._closing:
            raise Unavailable("the event history is closed")
        now = time.time()
        events = []
        for draft in drafts:
            self._assigned += 1
            events.append(
                Event(self.epoch, self._assigned, draft.topic, draft.type, draft.data_json, now)
            )
        if self._queue_done is None:
            self._queue_done = asyncio.get_running_loop().create_future()
        done = self._queue_done
        self._queue.extend(events)
        self._wakeup.set()
        await asyncio.shield(done)
        return events

    async def _write_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._queue:
                await self._commit_queue()
            if self._closing and not self._queue:
                return  # B1: everything queued before close is committed

    async def _commit_queue(self) -> None:
        batch, done = self._queue, self._queue_done
        self._queue, self._queue_done = [], None
        rows = [(e.position, e.topic, e.type, e.data_json, e.ts) for e in batch]
        try:
            if self._thread is None:
                raise sqlite3.OperationalError("closed")
            await self._run(self._insert, rows)
        except sqlite3.Error as exc:
            if done is not None and not done.done():
                done.set_exception(Unavailable(f"could not store events: {exc}"))
            return
        except BaseException:  # B1: whatever stops the writer, nobody waits forever
            if done is not None and not done.done():
                done.set_exception(Unavailable("the event history stopped while storing events"))
            raise
        self._committed = batch[-1].position
        self._touched.update(e.topic for e in batch)
        if self._deliver is not None:
            self._deliver(batch)
        if done is not None and not done.done():
            done.set_result(None)

    def _insert(self, rows: list[tuple[int, str, str, bytes, float]]) -> None:
        db = self._db
        if db is None:
            raise sqlite3.OperationalError("closed")
        db.executemany(
            "INSERT INTO events (position, topic, type, data, ts) VALUES (?, ?, ?, ?, ?)", rows
        )
        db.commit()

    async def replay(
        self,
        patterns: Sequence[TopicPattern],
        after: EventId,
        limit: int,
        max_bytes: int | None = None,
    ) -> Replay:
        if self._thread is None:
            raise Unavailable("the event history is closed")
        head = EventId(self.epoch, self._committed)
        gap = check_position(self.epoch, head.position, after)
        if gap is not None:
            return Replay([], head, gap)
        budget = max_bytes if max_bytes is not None else float("inf")
        try:
            rows, over, trimmed = await self._run(
                self._read, patterns, after.position, head.position, limit, budget
            )
        except sqlite3.Error as exc:
            raise Unavailable(f"could not read the event history: {exc}") from exc
        if trimmed > after.position:
            return Replay([], head, Gap.TRIMMED)
        if len(rows) > limit or over:
            return Replay([], head, Gap.TOO_FAR_BEHIND)
        events = [Event(self.epoch, r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]
        return Replay(events, head)

    def _read(
        self,
        patterns: Sequence[TopicPattern],
        after: int,
        head: int,
        limit: int,
        budget: float,
    ) -> tuple[list[sqlite3.Row], bool, int]:
        """The rows after ``after`` up to ``head`` (at most ``limit + 1``), whether they went
        over ``budget`` bytes of data, and the newest position dropped from these topics."""
        assert self._db is not None
        where, params = _topic_filter(patterns)
        rows: list[sqlite3.Row] = []
        size = 0
        cursor = self._db.execute(
            "SELECT position, topic, type, data, ts FROM events"
            f" WHERE position > ? AND position <= ? AND ({where}) ORDER BY position LIMIT ?",
            [after, head, *params, limit + 1],
        )
        over = False
        for row in cursor:  # B3: read as stepped, up to the budget
            size += len(row[3])
            if size > budget:
                over = True
                break
            rows.append(row)
        cursor.close()
        # B2: the marks after the events: a drop we missed has been recorded by now. The
        # watermark is read here too: only retention, on this thread, raises it (B4).
        mark = self._db.execute(f"SELECT MAX(position) FROM trimmed WHERE {where}", params)
        newest = mark.fetchone()[0]
        return rows, over, max(self._expired_through, 0 if newest is None else int(newest))

    async def trim(self) -> None:
        """Apply retention: keep at most N events per topic, none older than the age limit.

        Every drop is marked before its rows are deleted (B2); the pass is one transaction
        (B4).
        """
        if self._thread is None:
            return
        touched, self._touched = self._touched, set()
        await self._run(self._trim, touched, time.time() - self.retention.max_age_seconds)

    def _trim(self, touched: set[str], cutoff: float) -> None:
        db = self._db
        if db is None:
            return
        keep = self.retention.max_events_per_topic
        for topic in touched:
            newest_dropped = db.execute(
                "SELECT position FROM events WHERE topic = ? ORDER BY position DESC"
                " LIMIT 1 OFFSET ?",
                (topic, keep),
            ).fetchone()
            if newest_dropped is not None:
                self._mark_trimmed(topic, newest_dropped[0])
                db.execute(
                    "DELETE FROM events WHERE topic = ? AND position <= ?",
                    (topic, newest_dropped[0]),
                )
        expired: dict[str, int] = dict(
            db.execute(
                "SELECT topic, MAX(position) FROM events WHERE ts < ? GROUP BY topic", (cutoff,)
            ).fetchall()
        )
        if expired:
            for topic, position in expired.items():
                self._mark_trimmed(topic, position)
            db.execute(
                "DELETE FROM events WHERE ts < ? AND position <= ?", (cutoff, max(expired.values()))
            )
            for topic, position in expired.items():
                if db.execute("SELECT 1 FROM events WHERE topic = ? LIMIT 1", (topic,)).fetchone():
                    continue
                # fold the topic into the global watermark, raised before its mark goes
                self._expired_through = max(self._expired_through, position)
            self._set_meta("expired_through", str(self._expired_through))
            db.execute("DELETE FROM trimmed WHERE position <= ?", (self._expired_through,))
        db.commit()

    def _mark_trimmed(self, topic: str, position: int) -> None:
        assert self._db is not None
        self._db.execute(
            "INSERT INTO trimmed (topic, position) VALUES (?, ?) ON CONFLICT (topic)"
            " DO UPDATE SET position = MAX(position, excluded.position)",
            (topic, position),
        )

    async def _trim_forever(self) -> None:
        while True:
            await asyncio.sleep(self._trim_interval)
            try:
                await self.trim()
            except sqlite3.Error:
                continue  # retention is retried on the next tick; publishing is unaffected

    def _meta(self, key: str) -> str | None:
        assert self._db is not None
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> str:
        assert self._db is not None
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value ="
            " excluded.value",
            (key, value),
        )
        return value
